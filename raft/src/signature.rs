//! How a follower checks the ed25519 signature of a sealed batch: one rule,
//! whether the batch is checked alone or with others.
//!
//! The rule is the cofactored equation `[8]([s]B − R − [k]A) = 0`, with
//! `k = SHA-512(R ‖ A ‖ M) mod ℓ`, `s` canonical (`s < ℓ`), and `R` and `A`
//! decoded as curve25519-dalek decodes them (ZIP-215's rule). ed25519-dalek
//! offers a cofactorless single check and a batch check that is not the
//! same rule: a key holder can write a signature that passes one and fails
//! the other (a non-canonical `R`, or a small-order part in `R`). A
//! follower's answer would then depend on how many entries shared its
//! AppendEntries, and one refusing an entry that the others persisted
//! would stay behind forever. Under this rule, a batch passes exactly when
//! each of its signatures passes alone (but with probability 2⁻¹²⁸: the
//! weights are random).
//!
//! Every signature an honest signer makes passes: it satisfies the
//! cofactorless equation, which implies this one. What the rule accepts
//! beyond dalek's `verify` — a residue of small order — only the key's
//! holder can produce, and it lets no one else forge.
//!
//! Signing is ed25519-dalek's, unchanged; key events keep dalek's
//! `verify_strict` (checked once, at apply, on every node alike).

use curve25519_dalek::edwards::CompressedEdwardsY;
use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
use curve25519_dalek::traits::VartimeMultiscalarMul;
use sha2::Digest;

/// One signature's parts, decoded; `None` when `s` is not canonical or `R`
/// is not a point.
struct Decoded {
    s: Scalar,
    r: EdwardsPoint,
    k: Scalar,
    a: EdwardsPoint,
}

fn decode(key: &ed25519_dalek::VerifyingKey, message: &[u8], signature: &ed25519_dalek::Signature) -> Option<Decoded> {
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(*signature.s_bytes()))?;
    let r = CompressedEdwardsY(*signature.r_bytes()).decompress()?;
    let mut hash = sha2::Sha512::new();
    hash.update(signature.r_bytes());
    hash.update(key.as_bytes());
    hash.update(message);
    let k = Scalar::from_bytes_mod_order_wide(&hash.finalize().into());
    Some(Decoded {
        s,
        r,
        k,
        a: key.to_edwards(),
    })
}

/// Whether `signature` is `key`'s signature of `message` under the rule.
pub(crate) fn verify(key: &ed25519_dalek::VerifyingKey, message: &[u8], signature: &ed25519_dalek::Signature) -> bool {
    let Some(d) = decode(key, message, signature) else {
        return false;
    };
    // [s]B − [k]A, then less R: the residue must vanish once multiplied by 8.
    let sb_minus_ka = EdwardsPoint::vartime_double_scalar_mul_basepoint(&d.k, &-d.a, &d.s);
    (sb_minus_ka - d.r).mul_by_cofactor().is_identity()
}

/// Whether every `(key, message, signature)` passes [`verify`], checked
/// with one multi-scalar multiplication: `Σ zᵢ([sᵢ]B − Rᵢ − [kᵢ]Aᵢ)`,
/// times 8, must vanish, for random 128-bit weights `zᵢ` from the operating
/// system (never derived from the input, so a signer cannot search for a
/// batch that hides a bad signature).
pub(crate) fn verify_all(items: &[(&ed25519_dalek::VerifyingKey, &[u8], &ed25519_dalek::Signature)]) -> bool {
    let mut weights = vec![0u8; 16 * items.len()];
    if getrandom::fill(&mut weights).is_err() {
        // No randomness: check one by one rather than with weights an
        // attacker could know.
        return items
            .iter()
            .all(|&(key, message, signature)| verify(key, message, signature));
    }
    let mut basepoint_scalar = Scalar::ZERO;
    let mut scalars = Vec::with_capacity(2 * items.len() + 1);
    let mut points = Vec::with_capacity(2 * items.len() + 1);
    for (&(key, message, signature), weight) in items.iter().zip(weights.chunks_exact(16)) {
        let Some(d) = decode(key, message, signature) else {
            return false;
        };
        let z = Scalar::from(u128::from_le_bytes(weight.try_into().expect("16 bytes")));
        basepoint_scalar += z * d.s;
        scalars.push(-z);
        points.push(d.r);
        scalars.push(-(z * d.k));
        points.push(d.a);
    }
    scalars.push(basepoint_scalar);
    points.push(curve25519_dalek::constants::ED25519_BASEPOINT_POINT);
    EdwardsPoint::vartime_multiscalar_mul(scalars, points)
        .mul_by_cofactor()
        .is_identity()
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::Signer as _;

    use super::*;

    type Signed = (ed25519_dalek::VerifyingKey, Vec<u8>, ed25519_dalek::Signature);

    fn items(set: &[Signed]) -> Vec<(&ed25519_dalek::VerifyingKey, &[u8], &ed25519_dalek::Signature)> {
        set.iter().map(|(k, m, s)| (k, &m[..], s)).collect()
    }

    fn signed(n: u8) -> Signed {
        let key = ed25519_dalek::SigningKey::from_bytes(&[n; 32]);
        let message = vec![n; 48];
        let signature = key.sign(&message);
        (key.verifying_key(), message, signature)
    }

    /// Honest signatures pass alone and together, as under dalek's own
    /// check; any flipped bit of a signature or its message fails both ways,
    /// including when it hides among good ones.
    #[test]
    fn honest_signatures_pass_and_every_flipped_bit_fails() {
        let good: Vec<_> = (1..=9).map(signed).collect();
        for (key, message, signature) in &good {
            assert!(verify(key, message, signature));
            assert!(ed25519_dalek::Verifier::verify(key, message, signature).is_ok());
        }
        assert!(verify_all(&items(&good)));
        for bit in 0..512 {
            let mut bad = good.clone();
            let mut bytes = bad[4].2.to_bytes();
            bytes[bit / 8] ^= 1 << (bit % 8);
            bad[4].2 = ed25519_dalek::Signature::from_bytes(&bytes);
            assert!(!verify(&bad[4].0, &bad[4].1, &bad[4].2), "signature bit {bit}");
            assert!(!verify_all(&items(&bad)), "signature bit {bit} in a batch");
        }
        for bit in 0..48 * 8 {
            let mut bad = good.clone();
            bad[7].1[bit / 8] ^= 1 << (bit % 8);
            assert!(!verify(&bad[7].0, &bad[7].1, &bad[7].2), "message bit {bit}");
            assert!(!verify_all(&items(&bad)), "message bit {bit} in a batch");
        }
        // Another key's signature, and s + ℓ (same value, not canonical).
        let mut bad = good.clone();
        bad[0].0 = good[1].0;
        assert!(!verify_all(&items(&bad)));
        let (key, message, signature) = &good[2];
        let s = Scalar::from_canonical_bytes(*signature.s_bytes()).unwrap();
        let mut bytes = signature.to_bytes();
        bytes[32..].copy_from_slice(&add_order(&s.to_bytes()));
        let stretched = ed25519_dalek::Signature::from_bytes(&bytes);
        assert!(!verify(key, message, &stretched));
    }

    /// s + ℓ as 32 little-endian bytes (fits: s < ℓ < 2²⁵³).
    fn add_order(s: &[u8; 32]) -> [u8; 32] {
        // ℓ = 2²⁵² + 27742317777372353535851937790883648493, little endian.
        let order: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut out = [0u8; 32];
        let mut carry = 0u16;
        for i in 0..32 {
            let sum = u16::from(s[i]) + u16::from(order[i]) + carry;
            out[i] = sum as u8;
            carry = sum >> 8;
        }
        out
    }

    /// A signer who adds a point of small order to R gets a signature that
    /// dalek's `verify` refuses and its batch check may accept: here it
    /// passes alone and in any batch, the same answer both ways.
    #[test]
    fn a_small_order_part_in_r_gets_one_answer_alone_and_in_a_batch() {
        let a = Scalar::from_bytes_mod_order([5; 32]);
        let public = curve25519_dalek::constants::ED25519_BASEPOINT_POINT * a;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&public.compress().to_bytes()).unwrap();
        // y = 0 is a point of order 4.
        let torsion = CompressedEdwardsY([0; 32]).decompress().unwrap();
        assert!(torsion.is_small_order() && !torsion.is_identity());
        let message = b"a batch digest".to_vec();
        let r = Scalar::from_bytes_mod_order([9; 32]);
        let big_r = curve25519_dalek::constants::ED25519_BASEPOINT_POINT * r + torsion;
        let r_bytes = big_r.compress().to_bytes();
        let mut hash = sha2::Sha512::new();
        hash.update(r_bytes);
        hash.update(key.as_bytes());
        hash.update(&message);
        let k = Scalar::from_bytes_mod_order_wide(&hash.finalize().into());
        let s = r + k * a;
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(&r_bytes);
        bytes[32..].copy_from_slice(&s.to_bytes());
        let signature = ed25519_dalek::Signature::from_bytes(&bytes);
        assert!(ed25519_dalek::Verifier::verify(&key, &message, &signature).is_err());
        assert!(verify(&key, &message, &signature));
        let others: Vec<_> = (1..=5).map(signed).collect();
        for place in 0..=others.len() {
            let mut items: Vec<_> = others.iter().map(|(k, m, s)| (k, &m[..], s)).collect();
            items.insert(place, (&key, &message[..], &signature));
            for _ in 0..20 {
                assert!(verify_all(&items), "at {place}");
            }
        }
    }
}
