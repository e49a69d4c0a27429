//! Capability word sets as carried in `SpiceLinkMess` / `SpiceLinkReply`, and
//! the filtering a proxy applies before forwarding them. Bit `n` is bit
//! `n % 32` of word `n / 32`. This module does not decide header formats or
//! auth; it only answers "is bit n set" and builds adjusted copies.

use super::consts::{
    COMMON_CAP_AUTH_SASL, ChannelType, DISPLAY_CAP_GL_SCANOUT, MAIN_CAP_SEAMLESS_MIGRATE,
    MAIN_CAP_SEMI_SEAMLESS_MIGRATE,
};

/// Common and channel-specific capability words of one link side.
///
/// The word vectors are kept exactly as long as the peer sent them, even when
/// trailing words are zero, so forwarding preserves the counts (future
/// peers may send more than one word of each kind).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Caps {
    /// Common capability words (`COMMON_CAP_*` bits).
    pub common: Vec<u32>,
    /// Channel-type specific capability words (`MAIN_CAP_*`, `DISPLAY_CAP_*`, ...).
    pub channel: Vec<u32>,
}

fn has_bit(words: &[u32], bit: u32) -> bool {
    let word = usize::try_from(bit / 32).unwrap_or(usize::MAX);
    words
        .get(word)
        .is_some_and(|w| w & (1u32 << (bit % 32)) != 0)
}

fn set_bit(words: &mut Vec<u32>, bit: u32) {
    let word = usize::try_from(bit / 32).unwrap_or(usize::MAX);
    if words.len() <= word {
        words.resize(word.saturating_add(1), 0);
    }
    if let Some(w) = words.get_mut(word) {
        *w |= 1u32 << (bit % 32);
    }
}

fn clear_bit(words: &mut [u32], bit: u32) {
    let word = usize::try_from(bit / 32).unwrap_or(usize::MAX);
    if let Some(w) = words.get_mut(word) {
        *w &= !(1u32 << (bit % 32));
    }
}

// Word-wise AND keeping `ours`' length: words `theirs` lacks count as zero.
fn and_words(ours: &[u32], theirs: &[u32]) -> Vec<u32> {
    ours.iter()
        .enumerate()
        .map(|(i, w)| w & theirs.get(i).copied().unwrap_or(0))
        .collect()
}

impl Caps {
    /// Build from word vectors.
    pub fn new(common: Vec<u32>, channel: Vec<u32>) -> Self {
        Self { common, channel }
    }

    /// Whether common capability `bit` is set.
    pub fn has_common(&self, bit: u32) -> bool {
        has_bit(&self.common, bit)
    }

    /// Whether channel capability `bit` is set.
    pub fn has_channel(&self, bit: u32) -> bool {
        has_bit(&self.channel, bit)
    }

    /// Set common capability `bit`, growing the word vector if needed.
    pub fn set_common(&mut self, bit: u32) {
        set_bit(&mut self.common, bit);
    }

    /// Clear common capability `bit`; never changes the word count.
    pub fn clear_common(&mut self, bit: u32) {
        clear_bit(&mut self.common, bit);
    }

    /// Set channel capability `bit`, growing the word vector if needed.
    pub fn set_channel(&mut self, bit: u32) {
        set_bit(&mut self.channel, bit);
    }

    /// Clear channel capability `bit`; never changes the word count.
    pub fn clear_channel(&mut self, bit: u32) {
        clear_bit(&mut self.channel, bit);
    }

    /// Total number of capability words (common + channel).
    pub fn word_count(&self) -> usize {
        self.common.len().saturating_add(self.channel.len())
    }

    /// A copy without the capabilities a relaying proxy cannot carry:
    /// common AUTH_SASL (we only speak ticket auth), main SEMI_SEAMLESS and
    /// SEAMLESS migration (migration would send the client to the
    /// hypervisor directly), display GL_SCANOUT (needs a unix socket fd).
    /// Everything else, including word counts, is kept.
    pub fn filter_for_proxy(&self, channel: ChannelType) -> Caps {
        let mut out = self.clone();
        out.clear_common(COMMON_CAP_AUTH_SASL);
        match channel {
            ChannelType::Main => {
                out.clear_channel(MAIN_CAP_SEMI_SEAMLESS_MIGRATE);
                out.clear_channel(MAIN_CAP_SEAMLESS_MIGRATE);
            }
            ChannelType::Display => out.clear_channel(DISPLAY_CAP_GL_SCANOUT),
            _ => {}
        }
        out
    }

    /// Bits set in both `self` and `other`. The result has `self`'s word
    /// counts; words missing from `other` count as zero.
    pub fn intersect(&self, other: &Caps) -> Caps {
        Caps {
            common: and_words(&self.common, &other.common),
            channel: and_words(&self.channel, &other.channel),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consts::{
        COMMON_CAP_AUTH_SELECTION, COMMON_CAP_AUTH_SPICE, COMMON_CAP_MINI_HEADER,
        MAIN_CAP_AGENT_CONNECTED_TOKENS, MAIN_CAP_NAME_AND_UUID,
    };

    #[test]
    fn bits_map_to_words() {
        let caps = Caps::new(vec![0x0d], vec![0, 0x8000_0001]);
        assert!(caps.has_common(COMMON_CAP_AUTH_SELECTION));
        assert!(!caps.has_common(COMMON_CAP_AUTH_SPICE));
        assert!(caps.has_common(COMMON_CAP_AUTH_SASL));
        assert!(caps.has_common(COMMON_CAP_MINI_HEADER));
        assert!(!caps.has_common(32));
        assert!(caps.has_channel(32));
        assert!(caps.has_channel(63));
        assert!(!caps.has_channel(64));
        assert!(!caps.has_channel(u32::MAX));
    }

    #[test]
    fn set_grows_and_clear_keeps_counts() {
        let mut caps = Caps::default();
        caps.set_channel(40);
        assert_eq!(caps.channel, vec![0, 1 << 8]);
        caps.clear_channel(40);
        assert_eq!(caps.channel, vec![0, 0]);
        caps.clear_common(99);
        assert!(caps.common.is_empty());
        caps.set_common(COMMON_CAP_MINI_HEADER);
        assert_eq!(caps.common, vec![8]);
        assert_eq!(caps.word_count(), 3);
    }

    #[test]
    fn filter_strips_what_a_proxy_cannot_carry() {
        // spice-gtk main link as captured: common 0x0d, main 0x0f.
        let main = Caps::new(vec![0x0d], vec![0x0f]).filter_for_proxy(ChannelType::Main);
        assert_eq!(main.common, vec![0x09]);
        assert_eq!(main.channel, vec![0x06]);
        assert!(main.has_channel(MAIN_CAP_NAME_AND_UUID));
        assert!(main.has_channel(MAIN_CAP_AGENT_CONNECTED_TOKENS));

        // spice-gtk display 0x3bf includes GL_SCANOUT (bit 7); extra words survive.
        let display =
            Caps::new(vec![0x0d, 0], vec![0x3bf, 0]).filter_for_proxy(ChannelType::Display);
        assert_eq!(display.common, vec![0x09, 0]);
        assert_eq!(display.channel, vec![0x33f, 0]);

        // Main bits mean nothing on other channels.
        let inputs = Caps::new(vec![0x0b], vec![0x0f]).filter_for_proxy(ChannelType::Inputs);
        assert_eq!(inputs.channel, vec![0x0f]);
    }

    #[test]
    fn intersect_keeps_self_shape() {
        let client = Caps::new(vec![0x0d], vec![0x3bf, 0xff]);
        let server = Caps::new(vec![0x0b, 0xff], vec![0x1052]);
        let both = client.intersect(&server);
        assert_eq!(both.common, vec![0x09]);
        assert_eq!(both.channel, vec![0x12, 0]);
    }
}
