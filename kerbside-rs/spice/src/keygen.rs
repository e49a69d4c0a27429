//! Fast generation of the one-time RSA-1024 ticket keys.
//!
//! Every link consumes a fresh RSA-1024 key, so key generation is most of the proxy's CPU per
//! link. A 1024-bit key needs two random 512-bit primes; what costs is the primality testing
//! of candidates. This module does it with fixed-width arithmetic instead of the rsa crate's
//! general-purpose big integers:
//!
//! - candidates come from an interval sieve: a random odd 512-bit start with its two top bits
//!   set (so `p * q` has exactly 1024 bits) and the next [`SIEVE_SPAN`] odd numbers, crossed out
//!   by every odd prime below [`SIEVE_LIMIT`];
//! - each survivor gets one Miller-Rabin round to base 2, computed with Montgomery squarings and
//!   modular doublings only (base 2 needs no multiplications), which rejects the composites;
//! - the first survivor that passes gets [`MR_ROUNDS`] further Miller-Rabin rounds with
//!   uniformly random bases. For random 512-bit candidates that bounds the chance of accepting a
//!   composite below 2^-100 (Damgård, Landrock and Pomerance, as tabulated in FIPS 186-5
//!   appendix B.3); the base-2 round only comes on top.
//!
//! All modular exponentiations run in constant time for a given modulus size (fixed windows,
//! table lookups that read every entry, no data-dependent branches); the early exits are on
//! the composites being rejected. The primes are wiped after use. The rsa crate then derives
//! the private exponent and CRT values (`RsaPrivateKey::from_p_q`), which also validates the
//! key.

use rand::{CryptoRng, RngCore};
use rsa::{BigUint, RsaPrivateKey};
use std::sync::OnceLock;
use zeroize::Zeroize;

/// 64-bit limbs in a 512-bit number.
const LIMBS: usize = 8;

/// A 512-bit number, least significant limb first.
type U512 = [u64; LIMBS];

/// Odd primes below this bound sieve the candidates. Beyond it the cost of reducing each new
/// start modulo more primes exceeds the Miller-Rabin rounds they would save.
const SIEVE_LIMIT: u32 = 1 << 15;

/// Odd candidates per sieve interval. 512-bit primes are about 355 apart on average, so an
/// interval of 1,024 odd numbers (2,048 integers) almost always holds several.
const SIEVE_SPAN: usize = 1024;

/// Random-base Miller-Rabin rounds a candidate must pass after the base-2 round.
pub const MR_ROUNDS: usize = 7;

/// The RSA public exponent (F4), as spice-server uses.
const PUBLIC_EXPONENT: u64 = 65_537;

/// Generates an RSA-1024 key with e = 65537 whose primes are 512 bits each with the top two
/// bits set, so the modulus is exactly 1024 bits.
///
/// # Errors
/// The rsa crate's error if it rejects the primes (which would be a bug here: they are checked
/// before the call).
pub fn generate_rsa_1024<R: CryptoRng + RngCore>(rng: &mut R) -> rsa::Result<RsaPrivateKey> {
    loop {
        let mut p = random_prime(rng);
        let mut q = random_prime(rng);
        // FIPS 186-5 A.1.3: |p - q| > 2^(nlen/2 - 100). Random primes fail this with
        // probability about 2^-100; checking is cheap.
        let far_apart = difference_exceeds(&p, &q, 512 - 100);
        if far_apart {
            let key = RsaPrivateKey::from_p_q(
                to_biguint(&p),
                to_biguint(&q),
                BigUint::from(PUBLIC_EXPONENT),
            );
            p.zeroize();
            q.zeroize();
            return key;
        }
        p.zeroize();
        q.zeroize();
    }
}

/// A random 512-bit prime with its top two bits set and `gcd(p - 1, 65537) = 1`.
fn random_prime<R: CryptoRng + RngCore>(rng: &mut R) -> U512 {
    let primes = small_primes();
    let mut composite = [false; SIEVE_SPAN];
    loop {
        let mut start = random_u512(rng);
        if let Some(top) = start.last_mut() {
            *top |= 0b11 << 62;
        }
        if let Some(low) = start.first_mut() {
            *low |= 1;
        }
        sieve(&start, primes, &mut composite);
        for (offset, _) in composite.iter().enumerate().filter(|(_, c)| !**c) {
            let Some(candidate) = add_small(&start, 2 * offset as u64) else {
                // The interval ran past 2^512: take a new start.
                break;
            };
            if mod_small(&candidate, PUBLIC_EXPONENT) == 1 {
                // 65537 divides p - 1, so e has no inverse modulo p - 1.
                continue;
            }
            let monty = Monty::new(candidate);
            if monty.miller_rabin_base_two() && {
                let r2 = monty.r2();
                (0..MR_ROUNDS).all(|_| monty.miller_rabin(rng, &r2))
            } {
                start.zeroize();
                return candidate;
            }
        }
        start.zeroize();
    }
}

/// Marks `composite[i]` when `start + 2i` has an odd prime factor below [`SIEVE_LIMIT`].
fn sieve(start: &U512, primes: &[Group], composite: &mut [bool; SIEVE_SPAN]) {
    composite.fill(false);
    for group in primes {
        let residue = mod_small(start, group.product);
        for &p in &group.primes {
            if p == 0 {
                continue;
            }
            let p = u64::from(p);
            // First i with start + 2i ≡ 0 (mod p): i ≡ -start / 2 ≡ (p - r) * (p + 1) / 2.
            let r = residue % p;
            let first = ((p - r) % p) * p.div_ceil(2) % p;
            let step = usize::try_from(p).unwrap_or(usize::MAX);
            let first = usize::try_from(first).unwrap_or(usize::MAX);
            for flag in composite.iter_mut().skip(first).step_by(step) {
                *flag = true;
            }
        }
    }
}

/// Up to four small primes whose product fits in a u64, so that one pass over the limbs of a
/// candidate gives its residue modulo all of them.
struct Group {
    product: u64,
    /// The primes; unused slots are 0.
    primes: [u32; 4],
}

/// The odd primes below [`SIEVE_LIMIT`], grouped.
fn small_primes() -> &'static [Group] {
    static PRIMES: OnceLock<Vec<Group>> = OnceLock::new();
    PRIMES.get_or_init(|| {
        let limit = SIEVE_LIMIT as usize;
        let mut is_composite = vec![false; limit];
        let mut groups: Vec<Group> = Vec::new();
        for n in 3..limit {
            if is_composite.get(n).copied().unwrap_or(true) || n % 2 == 0 {
                continue;
            }
            for multiple in is_composite.iter_mut().skip(n * n).step_by(n) {
                *multiple = true;
            }
            let p = u32::try_from(n).unwrap_or(u32::MAX);
            let fits = groups.last_mut().and_then(|g| {
                let slot = g.primes.iter().position(|&s| s == 0)?;
                let product = g.product.checked_mul(u64::from(p))?;
                Some((g, slot, product))
            });
            match fits {
                Some((group, slot, product)) => {
                    group.product = product;
                    if let Some(s) = group.primes.get_mut(slot) {
                        *s = p;
                    }
                }
                None => groups.push(Group {
                    product: u64::from(p),
                    primes: [p, 0, 0, 0],
                }),
            }
        }
        groups
    })
}

/// `x mod m` for a small `m`.
fn mod_small(x: &U512, m: u64) -> u64 {
    let m = u128::from(m);
    let mut r: u128 = 0;
    for &limb in x.iter().rev() {
        r = ((r << 64) | u128::from(limb)) % m;
    }
    // r < m <= u64::MAX
    u64::try_from(r).unwrap_or(0)
}

/// `x + y`, or `None` on overflow past 512 bits.
fn add_small(x: &U512, y: u64) -> Option<U512> {
    let mut out = *x;
    let mut carry = y;
    for limb in &mut out {
        let (sum, overflow) = limb.overflowing_add(carry);
        *limb = sum;
        carry = u64::from(overflow);
    }
    (carry == 0).then_some(out)
}

/// Whether `|a - b| >= 2^bits`.
fn difference_exceeds(a: &U512, b: &U512, bits: u32) -> bool {
    let (big, small) = if less_than(a, b) { (b, a) } else { (a, b) };
    let (diff, _) = sub(big, small);
    let top = bit_length(&diff);
    top > bits
}

fn bit_length(x: &U512) -> u32 {
    for (i, &limb) in x.iter().enumerate().rev() {
        if limb != 0 {
            return 64 * u32::try_from(i).unwrap_or(0) + (64 - limb.leading_zeros());
        }
    }
    0
}

fn random_u512<R: RngCore>(rng: &mut R) -> U512 {
    let mut x = [0u64; LIMBS];
    for limb in &mut x {
        *limb = rng.next_u64();
    }
    x
}

fn to_biguint(x: &U512) -> BigUint {
    let mut bytes = [0u8; 8 * LIMBS];
    for (chunk, limb) in bytes.chunks_exact_mut(8).zip(x) {
        chunk.copy_from_slice(&limb.to_le_bytes());
    }
    let n = BigUint::from_bytes_le(&bytes);
    bytes.zeroize();
    n
}

/// `a + b·c + carry` as (low, high).
#[inline(always)]
fn mac(a: u64, b: u64, c: u64, carry: u64) -> (u64, u64) {
    let t = u128::from(a) + u128::from(b) * u128::from(c) + u128::from(carry);
    (t as u64, (t >> 64) as u64)
}

/// `a + b + carry` as (sum, carry).
#[inline(always)]
fn adc(a: u64, b: u64, carry: u64) -> (u64, u64) {
    let t = u128::from(a) + u128::from(b) + u128::from(carry);
    (t as u64, (t >> 64) as u64)
}

/// `a - b - borrow` with `borrow` 0 or 1, as (difference, borrow 0 or 1).
#[inline(always)]
fn sbb(a: u64, b: u64, borrow: u64) -> (u64, u64) {
    let t = u128::from(a)
        .wrapping_sub(u128::from(b))
        .wrapping_sub(u128::from(borrow));
    (t as u64, ((t >> 64) as u64) & 1)
}

/// `a - b` and the final borrow (1 when `a < b`).
#[inline(always)]
fn sub(a: &U512, b: &U512) -> (U512, u64) {
    let mut out = [0u64; LIMBS];
    let mut borrow = 0;
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        (*o, borrow) = sbb(x, y, borrow);
    }
    (out, borrow)
}

fn less_than(a: &U512, b: &U512) -> bool {
    sub(a, b).1 == 1
}

/// `mask ? a : b` limb by limb, `mask` all ones or all zeroes.
#[inline(always)]
fn select(mask: u64, a: &U512, b: &U512) -> U512 {
    let mut out = *b;
    for (o, &x) in out.iter_mut().zip(a) {
        *o = (x & mask) | (*o & !mask);
    }
    out
}

fn ct_eq(a: &U512, b: &U512) -> bool {
    a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Montgomery arithmetic modulo an odd 512-bit `n` with its top bit set (R = 2^512).
struct Monty {
    n: U512,
    /// `-n^-1 mod 2^64`.
    n0: u64,
    /// R mod n: one in Montgomery form.
    one: U512,
    /// n - 1 in Montgomery form.
    minus_one: U512,
    /// n - 1 = d·2^s with d odd.
    d: U512,
    s: u32,
}

impl Monty {
    fn new(n: U512) -> Monty {
        let n_low = n.first().copied().unwrap_or(1);
        // Newton's iteration doubles the correct low bits each step: 1 → 64 in six steps
        // (odd n is its own inverse modulo 8, so starting from n gives 3 bits).
        let mut inverse = n_low;
        for _ in 0..5 {
            inverse = inverse.wrapping_mul(2u64.wrapping_sub(n_low.wrapping_mul(inverse)));
        }
        // R mod n = 2^512 - n, since 2^511 <= n < 2^512.
        let (one, _) = sub(&[0; LIMBS], &n);
        let minus_one = sub(&n, &one).0;
        let (d, s) = odd_part(&n);
        Monty {
            n,
            n0: inverse.wrapping_neg(),
            one,
            minus_one,
            d,
            s,
        }
    }

    /// R² mod n, to convert into Montgomery form: R mod n doubled 512 times. Only the
    /// random-base rounds need it, so it is not part of `new`.
    fn r2(&self) -> U512 {
        let mut r2 = self.one;
        for _ in 0..512 {
            r2 = self.double(&r2);
        }
        r2
    }

    /// Montgomery product `a·b·R^-1 mod n` for `a, b < n` (CIOS).
    #[expect(
        clippy::indexing_slicing,
        reason = "fixed-size limb arrays indexed by loop counters below their length"
    )]
    fn mul(&self, a: &U512, b: &U512) -> U512 {
        let n = &self.n;
        let mut t = [0u64; LIMBS + 2];
        for &bi in b {
            let mut carry = 0;
            for j in 0..LIMBS {
                (t[j], carry) = mac(t[j], a[j], bi, carry);
            }
            let (sum, high) = adc(t[LIMBS], carry, 0);
            t[LIMBS] = sum;
            t[LIMBS + 1] = high;

            let m = t[0].wrapping_mul(self.n0);
            let (_, mut carry) = mac(t[0], m, n[0], 0);
            for j in 1..LIMBS {
                (t[j - 1], carry) = mac(t[j], m, n[j], carry);
            }
            let (sum, high) = adc(t[LIMBS], carry, 0);
            t[LIMBS - 1] = sum;
            t[LIMBS] = t[LIMBS + 1] + high;
        }
        let mut low = [0u64; LIMBS];
        low.copy_from_slice(&t[..LIMBS]);
        self.reduce_once(&low, t[LIMBS])
    }

    /// Montgomery square `a²·R^-1 mod n` for `a < n`: the cross products once, doubled, then
    /// the diagonal, then a separate reduction (100 word products instead of 128).
    #[expect(
        clippy::indexing_slicing,
        reason = "fixed-size limb arrays indexed by loop counters below their length"
    )]
    fn square(&self, a: &U512) -> U512 {
        let mut t = [0u64; 2 * LIMBS];
        for i in 0..LIMBS {
            let mut carry = 0;
            for j in i + 1..LIMBS {
                (t[i + j], carry) = mac(t[i + j], a[i], a[j], carry);
            }
            t[i + LIMBS] = carry;
        }
        let mut top = 0;
        for limb in &mut t {
            let next = *limb >> 63;
            *limb = (*limb << 1) | top;
            top = next;
        }
        let mut carry = 0;
        for i in 0..LIMBS {
            let (low, high) = mac(0, a[i], a[i], 0);
            let c;
            (t[2 * i], c) = adc(t[2 * i], low, carry);
            (t[2 * i + 1], carry) = adc(t[2 * i + 1], high, c);
        }
        // Montgomery reduction of the 1024-bit t.
        let n = &self.n;
        let mut extra = 0;
        for i in 0..LIMBS {
            let m = t[i].wrapping_mul(self.n0);
            let mut carry = 0;
            for j in 0..LIMBS {
                (t[i + j], carry) = mac(t[i + j], m, n[j], carry);
            }
            (t[i + LIMBS], extra) = adc(t[i + LIMBS], carry, extra);
        }
        let mut high = [0u64; LIMBS];
        high.copy_from_slice(&t[LIMBS..]);
        self.reduce_once(&high, extra)
    }

    /// `x + top·2^512` reduced once modulo n, for values below 2n.
    #[inline(always)]
    fn reduce_once(&self, x: &U512, top: u64) -> U512 {
        let (reduced, borrow) = sub(x, &self.n);
        let (_, borrow) = sbb(top, 0, borrow);
        select(borrow.wrapping_neg(), x, &reduced)
    }

    /// `2a mod n` for `a < n` (the same in and out of Montgomery form).
    #[inline(always)]
    fn double(&self, a: &U512) -> U512 {
        let mut doubled = [0u64; LIMBS];
        let mut carry = 0;
        for (d, &x) in doubled.iter_mut().zip(a) {
            *d = (x << 1) | carry;
            carry = x >> 63;
        }
        let (reduced, borrow) = sub(&doubled, &self.n);
        // Keep `doubled` only when it did not overflow and is below n.
        let keep = (borrow & !carry & 1).wrapping_neg();
        select(keep, &doubled, &reduced)
    }

    /// One Miller-Rabin round to base 2.
    fn miller_rabin_base_two(&self) -> bool {
        // 2^d: square for every bit, double where the bit is set.
        let mut x = self.one;
        for bit in (0..512).rev() {
            x = self.square(&x);
            let doubled = self.double(&x);
            x = select(bit_mask(&self.d, bit), &doubled, &x);
        }
        self.finish_round(x)
    }

    /// One Miller-Rabin round to a uniformly random base in [2, n - 2]; `r2` is
    /// [`Monty::r2`].
    fn miller_rabin<R: RngCore>(&self, rng: &mut R, r2: &U512) -> bool {
        let base = loop {
            let candidate = random_u512(rng);
            // Uniform in [2, n - 2]: keep candidates below n - 1 and not below 2.
            let (_, below) = sub(&candidate, &sub(&self.n, &[1, 0, 0, 0, 0, 0, 0, 0]).0);
            if below == 1 && !less_than(&candidate, &[2, 0, 0, 0, 0, 0, 0, 0]) {
                break candidate;
            }
        };
        let x = self.pow(&self.mul(&base, r2), &self.d);
        self.finish_round(x)
    }

    /// The Miller-Rabin tail: `x = a^d`; n passes if x = ±1 or x squares to -1 within s - 1
    /// squarings.
    fn finish_round(&self, mut x: U512) -> bool {
        if ct_eq(&x, &self.one) || ct_eq(&x, &self.minus_one) {
            return true;
        }
        for _ in 1..self.s {
            x = self.square(&x);
            if ct_eq(&x, &self.minus_one) {
                return true;
            }
            if ct_eq(&x, &self.one) {
                return false;
            }
        }
        false
    }

    /// `base^exponent` in Montgomery form, 4-bit fixed windows, constant-time table reads.
    fn pow(&self, base: &U512, exponent: &U512) -> U512 {
        let mut table = [self.one; 16];
        let mut power = self.one;
        for entry in table.iter_mut().skip(1) {
            power = self.mul(&power, base);
            *entry = power;
        }
        let mut x = self.one;
        for window in (0..128).rev() {
            for _ in 0..4 {
                x = self.square(&x);
            }
            let bits = nibble(exponent, window);
            let mut factor = self.one;
            for (index, entry) in (0u64..).zip(&table) {
                let mask = u64::from(index == bits).wrapping_neg();
                factor = select(mask, entry, &factor);
            }
            x = self.mul(&x, &factor);
        }
        table.zeroize();
        x
    }
}

/// `n - 1 = d·2^s` with d odd, for odd n > 1.
fn odd_part(n: &U512) -> (U512, u32) {
    let (mut d, _) = sub(n, &[1, 0, 0, 0, 0, 0, 0, 0]);
    let mut s = 0;
    while d.first().is_some_and(|low| low & 1 == 0) {
        let mut carry = 0;
        for limb in d.iter_mut().rev() {
            let next = *limb & 1;
            *limb = (*limb >> 1) | (carry << 63);
            carry = next;
        }
        s += 1;
    }
    (d, s)
}

/// All ones when bit `bit` of `x` is set, else zero.
fn bit_mask(x: &U512, bit: usize) -> u64 {
    let limb = x.get(bit / 64).copied().unwrap_or(0);
    ((limb >> (bit % 64)) & 1).wrapping_neg()
}

/// The 4-bit window `window` of `x` (window 0 is the least significant).
fn nibble(x: &U512, window: usize) -> u64 {
    let limb = x.get(window / 16).copied().unwrap_or(0);
    (limb >> ((window % 16) * 4)) & 0xf
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use rsa::traits::{PrivateKeyParts, PublicKeyParts};

    fn from_biguint(n: &BigUint) -> U512 {
        let bytes = n.to_bytes_le();
        let mut x = [0u64; LIMBS];
        for (limb, chunk) in x.iter_mut().zip(bytes.chunks(8)) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            *limb = u64::from_le_bytes(word);
        }
        x
    }

    fn big(x: &U512) -> BigUint {
        to_biguint(x)
    }

    fn random_odd_modulus(rng: &mut StdRng) -> U512 {
        let mut n = random_u512(rng);
        n[LIMBS - 1] |= 1 << 63;
        n[0] |= 1;
        n
    }

    #[test]
    fn montgomery_product_matches_big_integers() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..200 {
            let n = random_odd_modulus(&mut rng);
            let monty = Monty::new(n);
            let nb = big(&n);
            let a = big(&random_u512(&mut rng)) % &nb;
            let b = big(&random_u512(&mut rng)) % &nb;
            let r = BigUint::from(1u8) << 512usize;
            // a·R·b·R·R^-1 = a·b·R; converting back gives a·b.
            let am = monty.mul(&from_biguint(&a), &monty.r2());
            let bm = monty.mul(&from_biguint(&b), &monty.r2());
            let product = monty.mul(&monty.mul(&am, &bm), &[1, 0, 0, 0, 0, 0, 0, 0]);
            assert_eq!(big(&product), (&a * &b) % &nb);
            assert_eq!(big(&monty.one), &r % &nb);
            assert_eq!(big(&monty.r2()), (&r * &r) % &nb);
            let doubled = monty.double(&from_biguint(&a));
            assert_eq!(big(&doubled), (&a * 2u8) % &nb);
        }
    }

    #[test]
    fn pow_matches_big_integers() {
        let mut rng = StdRng::seed_from_u64(2);
        for _ in 0..20 {
            let n = random_odd_modulus(&mut rng);
            let monty = Monty::new(n);
            let nb = big(&n);
            let base = big(&random_u512(&mut rng)) % &nb;
            let exponent = random_u512(&mut rng);
            let result = monty.pow(&monty.mul(&from_biguint(&base), &monty.r2()), &exponent);
            let plain = monty.mul(&result, &[1, 0, 0, 0, 0, 0, 0, 0]);
            assert_eq!(big(&plain), base.modpow(&big(&exponent), &nb));
        }
    }

    /// Miller-Rabin to base 2 against the definition, on primes and on composites that are
    /// hard for it: Carmichael numbers and strong pseudoprimes to base 2 scaled up to 512 bits
    /// are not available, so the composites are products of two large primes and of a prime
    /// with a small one.
    #[test]
    fn miller_rabin_separates_primes_from_composites() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..10 {
            let p = random_prime(&mut rng);
            let monty = Monty::new(p);
            assert!(monty.miller_rabin_base_two());
            let r2 = monty.r2();
            assert!((0..MR_ROUNDS).all(|_| monty.miller_rabin(&mut rng, &r2)));
            assert!(rsa::BigUint::from(2u8).modpow(&(big(&p) - 1u8), &big(&p)) == 1u8.into());
        }
        // Composite: a product of two 256-bit primes padded to 512 bits.
        for _ in 0..10 {
            let a = rsa::RsaPrivateKey::new(&mut rng, 512).unwrap();
            let primes = a.primes();
            let n = primes[0].clone() * &primes[1];
            let mut x = from_biguint(&n);
            if x[LIMBS - 1] >> 63 == 0 {
                continue;
            }
            x[0] |= 1;
            let monty = Monty::new(x);
            assert!(!monty.miller_rabin_base_two());
            assert!(!monty.miller_rabin(&mut rng, &monty.r2()));
        }
        // Composites with small factors that slip past the sieve.
        for _ in 0..50 {
            let mut x = random_odd_modulus(&mut rng);
            let mut m = mod_small(&x, 16_411); // a prime above the sieve limit
            while m != 0 {
                x = add_small(&x, 2).unwrap();
                m = mod_small(&x, 16_411);
            }
            let monty = Monty::new(x);
            assert!(!monty.miller_rabin_base_two());
        }
    }

    #[test]
    fn sieve_marks_exactly_the_small_multiples() {
        let mut rng = StdRng::seed_from_u64(4);
        let start = random_odd_modulus(&mut rng);
        let mut composite = [false; SIEVE_SPAN];
        sieve(&start, small_primes(), &mut composite);
        for (i, &flag) in composite.iter().enumerate() {
            let x = big(&add_small(&start, 2 * i as u64).unwrap());
            let has_small_factor = (3u32..SIEVE_LIMIT)
                .step_by(2)
                .any(|p| (&x % p) == BigUint::from(0u8));
            assert_eq!(flag, has_small_factor, "offset {i}");
        }
        // Some survive, most do not.
        let survivors = composite.iter().filter(|c| !**c).count();
        assert!(survivors > 50 && survivors < 250, "{survivors}");
    }

    #[test]
    fn keys_are_valid_1024_bit_rsa_keys() {
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..5 {
            let key = generate_rsa_1024(&mut rng).unwrap();
            assert_eq!(key.n().bits(), 1024);
            assert_eq!(key.e(), &BigUint::from(65_537u32));
            key.validate().unwrap();
            let primes = key.primes();
            assert_eq!(primes.len(), 2);
            for p in primes {
                assert_eq!(p.bits(), 512);
                // The top two bits are set.
                assert!(p >= &(BigUint::from(3u8) << 510usize));
                // Fermat to a few bases, with the rsa crate's arithmetic.
                for base in [2u32, 3, 5, 7, 11] {
                    assert_eq!(
                        BigUint::from(base).modpow(&(p - 1u8), p),
                        BigUint::from(1u8)
                    );
                }
            }
        }
    }

    #[test]
    fn helpers() {
        assert_eq!(add_small(&[u64::MAX; LIMBS], 1), None);
        assert_eq!(bit_length(&[0; LIMBS]), 0);
        assert_eq!(bit_length(&[1, 0, 0, 0, 0, 0, 0, 1]), 449);
        assert!(difference_exceeds(
            &[0, 0, 0, 0, 0, 0, 0, 1],
            &[0; LIMBS],
            448
        ));
        assert!(!difference_exceeds(
            &[0, 0, 0, 0, 0, 0, 0, 1],
            &[0; LIMBS],
            449
        ));
        assert!(!difference_exceeds(
            &[4, 0, 0, 0, 0, 0, 0, 0],
            &[3, 0, 0, 0, 0, 0, 0, 0],
            1
        ));
        assert!(difference_exceeds(
            &[5, 0, 0, 0, 0, 0, 0, 0],
            &[3, 0, 0, 0, 0, 0, 0, 0],
            1
        ));
        let primes: Vec<u32> = small_primes()
            .iter()
            .flat_map(|g| g.primes)
            .filter(|&p| p != 0)
            .collect();
        assert_eq!(primes[..5], [3, 5, 7, 11, 13]);
        assert_eq!(primes.len(), 3511); // π(32768) − 1 (no 2)
        for g in small_primes() {
            let product: u64 = g
                .primes
                .iter()
                .filter(|&&p| p != 0)
                .map(|&p| u64::from(p))
                .product();
            assert_eq!(product, g.product);
        }
    }
}
