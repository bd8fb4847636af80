//! A minimal unsigned 256-bit integer: enough for proof-of-work targets and cumulative chain work.

use std::cmp::Ordering;
use std::fmt;

/// Unsigned 256-bit integer, four 64-bit limbs, least significant first.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct U256(pub [u64; 4]);

impl U256 {
    /// Zero.
    pub const ZERO: U256 = U256([0; 4]);
    /// One.
    pub const ONE: U256 = U256([1, 0, 0, 0]);
    /// The largest value, 2^256 - 1.
    pub const MAX: U256 = U256([u64::MAX; 4]);

    /// From a `u64`.
    pub const fn from_u64(v: u64) -> U256 {
        U256([v, 0, 0, 0])
    }

    /// From 32 little-endian bytes (the order of a hash on the wire).
    pub fn from_le_bytes(b: &[u8; 32]) -> U256 {
        let mut l = [0u64; 4];
        for (i, limb) in l.iter_mut().enumerate() {
            *limb = u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        }
        U256(l)
    }

    /// From 32 big-endian bytes.
    pub fn from_be_bytes(b: &[u8; 32]) -> U256 {
        let mut le = *b;
        le.reverse();
        U256::from_le_bytes(&le)
    }

    /// To 32 little-endian bytes.
    pub fn to_le_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for i in 0..4 {
            out[i * 8..i * 8 + 8].copy_from_slice(&self.0[i].to_le_bytes());
        }
        out
    }

    /// To 32 big-endian bytes.
    pub fn to_be_bytes(&self) -> [u8; 32] {
        let mut b = self.to_le_bytes();
        b.reverse();
        b
    }

    /// Parses up to 64 hex digits (big-endian, optional `0x`).
    pub fn from_hex(s: &str) -> Option<U256> {
        let s = s.strip_prefix("0x").unwrap_or(s);
        if s.is_empty() || s.len() > 64 {
            return None;
        }
        let padded = format!("{s:0>64}");
        let v = super::hash::decode_hex(&padded)?;
        Some(U256::from_be_bytes(&v.try_into().ok()?))
    }

    /// Whether the value is zero.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 4]
    }

    /// Number of significant bits (0 for zero).
    pub fn bits(&self) -> u32 {
        for i in (0..4).rev() {
            if self.0[i] != 0 {
                return 64 * i as u32 + (64 - self.0[i].leading_zeros());
            }
        }
        0
    }

    /// The low 64 bits.
    pub fn low_u64(&self) -> u64 {
        self.0[0]
    }

    /// Addition, `None` on overflow.
    pub fn checked_add(&self, o: &U256) -> Option<U256> {
        let mut r = [0u64; 4];
        let mut carry = false;
        for (i, out) in r.iter_mut().enumerate() {
            let (s1, c1) = self.0[i].overflowing_add(o.0[i]);
            let (s2, c2) = s1.overflowing_add(carry as u64);
            *out = s2;
            carry = c1 || c2;
        }
        (!carry).then_some(U256(r))
    }

    /// Addition that saturates at `MAX`.
    pub fn saturating_add(&self, o: &U256) -> U256 {
        self.checked_add(o).unwrap_or(U256::MAX)
    }

    /// Subtraction with wrap-around.
    pub fn wrapping_sub(&self, o: &U256) -> U256 {
        let mut r = [0u64; 4];
        let mut borrow = false;
        for (i, out) in r.iter_mut().enumerate() {
            let (d1, b1) = self.0[i].overflowing_sub(o.0[i]);
            let (d2, b2) = d1.overflowing_sub(borrow as u64);
            *out = d2;
            borrow = b1 || b2;
        }
        U256(r)
    }

    /// Bitwise not.
    pub fn not(&self) -> U256 {
        U256([!self.0[0], !self.0[1], !self.0[2], !self.0[3]])
    }

    /// Shift left by `n` bits (bits shifted out are lost).
    pub fn shl(&self, n: u32) -> U256 {
        if n >= 256 {
            return U256::ZERO;
        }
        let (limbs, bits) = ((n / 64) as usize, n % 64);
        let mut r = [0u64; 4];
        for i in (limbs..4).rev() {
            let src = i - limbs;
            r[i] = self.0[src] << bits;
            if bits > 0 && src > 0 {
                r[i] |= self.0[src - 1] >> (64 - bits);
            }
        }
        U256(r)
    }

    /// Shift right by `n` bits.
    pub fn shr(&self, n: u32) -> U256 {
        if n >= 256 {
            return U256::ZERO;
        }
        let (limbs, bits) = ((n / 64) as usize, n % 64);
        let mut r = [0u64; 4];
        for (i, out) in r.iter_mut().enumerate().take(4 - limbs) {
            let src = i + limbs;
            *out = self.0[src] >> bits;
            if bits > 0 && src + 1 < 4 {
                *out |= self.0[src + 1] << (64 - bits);
            }
        }
        U256(r)
    }

    /// `self * m`, wrapping at 2^256 (as the reference node's `arith_uint256` does).
    pub fn wrapping_mul_u64(&self, m: u64) -> U256 {
        let mut out = [0u64; 4];
        let mut carry = 0u128;
        for (i, limb) in self.0.iter().enumerate() {
            let v = *limb as u128 * m as u128 + carry;
            out[i] = v as u64;
            carry = v >> 64;
        }
        U256(out)
    }

    /// Quotient and remainder; `None` when dividing by zero.
    ///
    /// Shift-and-subtract over only the quotient's possible bits, so it is cheap when the
    /// quotient is small (as it is for chain work on any real target).
    pub fn div_rem(&self, d: &U256) -> Option<(U256, U256)> {
        if d.is_zero() {
            return None;
        }
        if self < d {
            return Some((U256::ZERO, *self));
        }
        if d.0[1] == 0 && d.0[2] == 0 && d.0[3] == 0 {
            // a divisor of one limb: long division limb by limb
            let dv = d.0[0] as u128;
            let mut q = U256::ZERO;
            let mut rem = 0u128;
            for i in (0..4).rev() {
                let cur = (rem << 64) | self.0[i] as u128;
                q.0[i] = (cur / dv) as u64;
                rem = cur % dv;
            }
            return Some((q, U256::from_u64(rem as u64)));
        }
        let shift = self.bits() - d.bits();
        let mut rem = *self;
        let mut q = U256::ZERO;
        let mut div = d.shl(shift);
        for i in (0..=shift).rev() {
            if rem >= div {
                rem = rem.wrapping_sub(&div);
                q.0[(i / 64) as usize] |= 1 << (i % 64);
            }
            div = div.shr(1);
        }
        Some((q, rem))
    }
}

impl Ord for U256 {
    fn cmp(&self, o: &U256) -> Ordering {
        for i in (0..4).rev() {
            match self.0[i].cmp(&o.0[i]) {
                Ordering::Equal => continue,
                other => return other,
            }
        }
        Ordering::Equal
    }
}

impl PartialOrd for U256 {
    fn partial_cmp(&self, o: &U256) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl fmt::Display for U256 {
    /// Big-endian hex with leading zeros trimmed (`0x0` for zero).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = super::hash::encode_hex(&self.to_be_bytes());
        let t = hex.trim_start_matches('0');
        write!(f, "0x{}", if t.is_empty() { "0" } else { t })
    }
}

impl fmt::Debug for U256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn division_matches_u128() {
        let cases: [(u128, u128); 5] = [
            (1000, 7),
            (u128::MAX, 3),
            (1 << 100, (1 << 40) + 1),
            (5, 10),
            (12345678901234567890123, 1),
        ];
        for (a, b) in cases {
            let ua = U256([a as u64, (a >> 64) as u64, 0, 0]);
            let ub = U256([b as u64, (b >> 64) as u64, 0, 0]);
            let (q, r) = ua.div_rem(&ub).unwrap();
            assert_eq!(q.0[0] as u128 | (q.0[1] as u128) << 64, a / b);
            assert_eq!(r.0[0] as u128 | (r.0[1] as u128) << 64, a % b);
        }
        assert!(U256::ONE.div_rem(&U256::ZERO).is_none());
        // one-limb divisors of full-width numbers (the fast path): q * d + r == a, r < d
        let a = U256([0x0123_4567_89ab_cdef, u64::MAX, 7, 1 << 63]);
        for d in [1u64, 2, 3, 600, 86_400, u64::MAX, 0x8000_0000_0000_0001] {
            let (q, r) = a.div_rem(&U256::from_u64(d)).unwrap();
            assert!(r < U256::from_u64(d));
            assert_eq!(q.wrapping_mul_u64(d).checked_add(&r), Some(a), "{d}");
        }
        assert_eq!(U256::from_u64(3).wrapping_mul_u64(5), U256::from_u64(15));
        assert_eq!(
            U256::MAX.wrapping_mul_u64(2),
            U256::MAX.wrapping_sub(&U256::ONE)
        );
    }

    #[test]
    fn shifts_and_hex() {
        let one = U256::ONE;
        assert_eq!(one.shl(255).bits(), 256);
        assert_eq!(one.shl(255).shr(255), one);
        assert_eq!(one.shl(70).0[1], 1 << 6);
        let v = U256::from_hex("00000000ffffffffffffffffffffffffffffffffffffffffffffffffffffffff")
            .unwrap();
        assert_eq!(v.bits(), 224);
        assert_eq!(U256::from_hex(&v.to_string()).unwrap(), v);
        assert_eq!(U256::MAX.checked_add(&U256::ONE), None);
    }
}
