#!/usr/bin/python3
"""kerbside test probe: a headless SPICE client built on the real spice-gtk library.

It connects a SpiceSession (SpiceClientGLib through GObject introspection), connects
every channel the server offers, and waits until the requested channel types have
opened (SPICE_CHANNEL_OPENED) the requested number of times, e.g.
``--channels main,display:2,inputs,cursor,playback,record,usbredir:2``.
It then prints ONE JSON line on stdout describing what happened and exits:

    0 ok: every requested channel opened (and, with --ppm, a frame was written)
    1 usage error or the library refused to start the session
    2 authentication failed (SPICE_CHANNEL_ERROR_AUTH)
    3 connect failed (SPICE_CHANNEL_ERROR_CONNECT)
    4 TLS failed (SPICE_CHANNEL_ERROR_TLS)
    5 link failed (SPICE_CHANNEL_ERROR_LINK)
    6 I/O error (SPICE_CHANNEL_ERROR_IO)
    7 timeout: not everything requested opened within --timeout
    8 the server did not offer a requested channel (nothing new for --settle seconds)

An error event on main or on a requested channel type ends the run with its code;
errors on other channels are only reported. Run it with /usr/bin/python3 (needs the
Debian packages gir1.2-spiceclientglib-2.0 and python3-gi).
"""
import argparse
import ctypes
import json
import sys
import time

import gi

gi.require_version('SpiceClientGLib', '2.0')
from gi.repository import GLib, GObject  # noqa: E402
from gi.repository import SpiceClientGLib as Spice  # noqa: E402

# Session.connect() and Channel.connect() shadow GObject's signal connect().
connect_signal = GObject.Object.connect

EXIT_OK, EXIT_USAGE, EXIT_TIMEOUT, EXIT_NOT_OFFERED = 0, 1, 7, 8
EXIT_FOR_EVENT = {
    Spice.ChannelEvent.ERROR_AUTH: 2,
    Spice.ChannelEvent.ERROR_CONNECT: 3,
    Spice.ChannelEvent.ERROR_TLS: 4,
    Spice.ChannelEvent.ERROR_LINK: 5,
    Spice.ChannelEvent.ERROR_IO: 6,
}
RESULT_NAME = {0: 'ok', 1: 'usage', 2: 'auth', 3: 'connect', 4: 'tls', 5: 'link',
               6: 'io', 7: 'timeout', 8: 'not-offered'}
KNOWN_TYPES = ('main', 'display', 'inputs', 'cursor', 'playback', 'record',
               'usbredir', 'port', 'webdav', 'smartcard')


def parse_channels(spec):
    """'main,display:2' -> {'main': 1, 'display': 2}."""
    wanted = {}
    for item in spec.split(','):
        item = item.strip()
        if not item:
            continue
        name, _, count = item.partition(':')
        if name not in KNOWN_TYPES:
            raise ValueError('unknown channel type %r' % name)
        wanted[name] = int(count) if count else 1
        if wanted[name] < 1:
            raise ValueError('channel count must be >= 1: %r' % item)
    wanted.setdefault('main', 1)
    return wanted


def type_name(channel):
    return Spice.Channel.type_to_string(channel.get_property('channel-type'))


class Probe:
    def __init__(self, args, wanted):
        self.args = args
        self.wanted = wanted
        self.loop = GLib.MainLoop()
        self.t0 = time.monotonic()
        self.rc = None
        self.reason = ''
        self.channels = []          # every SpiceChannel the session created
        self.state = {}             # (type, id) -> {'opened': bool, 'event': str|None}
        self.events = []            # [elapsed_s, type, id, event nick]
        self.primary = None
        self.frames = 0
        self.ppm_written = False
        self.satisfied_at = None
        self.settle_source = None

    # -- bookkeeping --------------------------------------------------------
    def elapsed(self):
        return round(time.monotonic() - self.t0, 3)

    def opened_count(self, name):
        return sum(1 for (t, _), s in self.state.items() if t == name and s['opened'])

    def created_count(self, name):
        return sum(1 for (t, _) in self.state if t == name)

    def missing(self):
        return {t: n - self.opened_count(t) for t, n in self.wanted.items()
                if self.opened_count(t) < n}

    def finish(self, rc, reason=''):
        if self.rc is None:
            self.rc = rc
            self.reason = reason
            self.loop.quit()
        return False

    def check_done(self):
        if self.rc is not None or self.satisfied_at is not None:
            return
        if self.missing():
            self.arm_settle()
            return
        if self.args.ppm and not self.ppm_written:
            return
        self.satisfied_at = self.elapsed()
        GLib.timeout_add(int(self.args.hold * 1000), self.finish, EXIT_OK)

    def arm_settle(self):
        """When every created channel has settled (opened or failed) and something
        requested was never even created, give the server --settle seconds to offer it."""
        if self.settle_source is not None:
            GLib.source_remove(self.settle_source)
            self.settle_source = None
        pending = [k for k, s in self.state.items() if not s['opened'] and s['event'] is None]
        not_created = [t for t, n in self.wanted.items() if self.created_count(t) < n]
        if pending or not not_created or 'main' not in [t for t, _ in self.state]:
            return
        self.settle_source = GLib.timeout_add(
            int(self.args.settle * 1000), self.finish, EXIT_NOT_OFFERED,
            'server did not offer: ' + ','.join(sorted(not_created)))

    # -- signal handlers ----------------------------------------------------
    def on_channel_new(self, _session, channel):
        self.channels.append(channel)
        key = (type_name(channel), channel.get_property('channel-id'))
        self.state[key] = {'opened': False, 'event': None}
        connect_signal(channel, 'channel-event', self.on_event)
        if isinstance(channel, Spice.DisplayChannel):
            connect_signal(channel, 'display-primary-create', self.on_primary_create)
            connect_signal(channel, 'display-invalidate', self.on_invalidate)
        if not isinstance(channel, Spice.MainChannel):
            # Session.connect() links main; the application links the others.
            Spice.Channel.connect(channel)
        self.arm_settle()

    def on_event(self, channel, event):
        name = type_name(channel)
        key = (name, channel.get_property('channel-id'))
        self.events.append([self.elapsed(), name, key[1], event.value_nick])
        entry = self.state.setdefault(key, {'opened': False, 'event': None})
        if event == Spice.ChannelEvent.OPENED:
            entry['opened'] = True
            self.check_done()
            return
        if event == Spice.ChannelEvent.CLOSED:
            if self.args.exit_on_close and name == 'main' and self.satisfied_at is not None:
                # Held open until the server (or a proxy) closed it: report that.
                self.finish(EXIT_FOR_EVENT[Spice.ChannelEvent.ERROR_IO], 'main:%d closed' % key[1])
            return
        entry['event'] = event.value_nick
        if event in EXIT_FOR_EVENT and (name == 'main' or name in self.wanted):
            self.finish(EXIT_FOR_EVENT[event], '%s:%d %s' % (name, key[1], event.value_nick))
        else:
            self.arm_settle()

    def on_primary_create(self, channel, fmt, width, height, stride, _shmid, imgdata):
        if channel.get_property('channel-id') == 0:
            self.primary = {'format': fmt, 'width': width, 'height': height,
                            'stride': stride, 'data': imgdata}

    def on_invalidate(self, channel, _x, _y, _w, _h):
        if channel.get_property('channel-id') != 0:
            return
        self.frames += 1
        if self.args.ppm and not self.ppm_written and self.primary:
            write_ppm(self.args.ppm, self.primary)
            self.ppm_written = True
            self.check_done()

    # -- run ----------------------------------------------------------------
    def run(self, session):
        connect_signal(session, 'channel-new', self.on_channel_new)
        GLib.timeout_add(int(self.args.timeout * 1000), self.finish, EXIT_TIMEOUT, 'timeout')
        if not Spice.Session.connect(session):
            return self.finish(EXIT_USAGE, 'spice_session_connect() refused to start')
        self.loop.run()
        return self.rc

    def report(self):
        channels = []
        for ch in self.channels:
            key = (type_name(ch), ch.get_property('channel-id'))
            st = self.state.get(key, {})
            channels.append({'type': key[0], 'id': key[1], 'opened': st.get('opened', False),
                             'event': st.get('event'),
                             'bytes_read': ch.get_property('total-read-bytes')})
        out = {
            'ok': self.rc == EXIT_OK,
            'exit_code': self.rc,
            'result': RESULT_NAME.get(self.rc, 'unknown'),
            'reason': self.reason,
            'elapsed_s': self.elapsed(),
            'satisfied_s': self.satisfied_at,
            'requested': self.wanted,
            'missing': self.missing(),
            'opened': [{'type': c['type'], 'id': c['id']} for c in channels if c['opened']],
            'channels': channels,
            'bytes_read': sum(c['bytes_read'] for c in channels),
            'frames': self.frames,
            'primary': None if not self.primary else {
                k: self.primary[k] for k in ('width', 'height', 'stride', 'format')},
            'ppm': self.args.ppm if self.ppm_written else None,
            'events': self.events,
        }
        print(json.dumps(out, sort_keys=True), flush=True)


def write_ppm(path, primary):
    """Dump a 32bpp BGRx primary surface as a binary PPM (P6)."""
    w, h, stride = primary['width'], primary['height'], primary['stride']
    raw = ctypes.string_at(primary['data'], stride * h)
    out = bytearray(b'P6\n%d %d\n255\n' % (w, h))
    for y in range(h):
        row = raw[y * stride: y * stride + w * 4]
        px = bytearray(w * 3)
        px[0::3] = row[2::4]
        px[1::3] = row[1::4]
        px[2::3] = row[0::4]
        out += px
    with open(path, 'wb') as f:
        f.write(out)


class ArgParser(argparse.ArgumentParser):
    """argparse exits 2 on bad usage, which would read as an auth failure."""

    def error(self, message):
        self.print_usage(sys.stderr)
        print('%s: error: %s' % (self.prog, message), file=sys.stderr)
        sys.exit(EXIT_USAGE)


def main():
    ap = ArgParser(description=__doc__.split('\n')[0])
    ap.add_argument('--host', default='127.0.0.1')
    ap.add_argument('--port', type=int, help='plain SPICE port')
    ap.add_argument('--tls-port', type=int, help='TLS SPICE port')
    ap.add_argument('--password')
    ap.add_argument('--ca-file', help='CA bundle (PEM) used to verify the TLS port')
    ap.add_argument('--host-subject', help='expected server subject, "C=..,O=..,CN=.."')
    ap.add_argument('--secure-all', action='store_true',
                    help='send every channel to the TLS port (secure-channels=all)')
    ap.add_argument('--secure-channels', help='comma list of channels to send to the TLS port')
    ap.add_argument('--channels', default='main',
                    help='required channels, e.g. main,display:2,inputs,usbredir:2')
    ap.add_argument('--timeout', type=float, default=15.0, help='seconds for everything')
    ap.add_argument('--settle', type=float, default=2.0,
                    help='seconds without new channels before a missing one is "not offered"')
    ap.add_argument('--hold', type=float, default=0.2,
                    help='seconds to stay connected after success (collects more bytes)')
    ap.add_argument('--exit-on-close', action='store_true',
                    help='during --hold, end with the I/O code (6) as soon as the main channel '
                         'is closed, instead of waiting for the hold to pass')
    ap.add_argument('--ppm', help='also wait for a frame on display 0 and write it here (P6)')
    args = ap.parse_args()
    if not args.port and not args.tls_port:
        ap.error('need --port and/or --tls-port')
    try:
        wanted = parse_channels(args.channels)
    except ValueError as e:
        ap.error(str(e))
    if args.ppm:
        wanted.setdefault('display', 1)

    session = Spice.Session()
    session.set_property('host', args.host)
    if args.port:
        session.set_property('port', str(args.port))
    if args.tls_port:
        session.set_property('tls-port', str(args.tls_port))
    if args.password is not None:
        session.set_property('password', args.password)
    if args.ca_file:
        session.set_property('ca-file', args.ca_file)
    if args.host_subject:
        session.set_property('cert-subject', args.host_subject)
        session.set_property('verify', Spice.SessionVerify.SUBJECT)
    if args.secure_all:
        session.set_property('secure-channels', ['all'])
    elif args.secure_channels:
        session.set_property('secure-channels', args.secure_channels.split(','))
    # spice-gtk only creates audio and usbredir channels when these are enabled.
    session.set_property('enable-audio', 'playback' in wanted or 'record' in wanted)
    session.set_property('enable-usbredir', 'usbredir' in wanted)
    if 'usbredir' in wanted:
        # The USB device manager gives each usbredir channel its usbredir host;
        # without it spice-gtk links the channel but asserts on every message.
        try:
            Spice.UsbDeviceManager.get(session)
        except GLib.Error as e:
            print('spice_probe: no USB device manager: %s' % e.message, file=sys.stderr)

    probe = Probe(args, wanted)
    rc = probe.run(session)
    probe.report()
    session.disconnect()
    return rc


if __name__ == '__main__':
    sys.exit(main())
