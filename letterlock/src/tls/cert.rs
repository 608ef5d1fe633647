//! The self-signed certificate that carries a letterlock key in a TLS 1.3 handshake.
//!
//! TLS stacks (OpenSSL's `s_client`, Python's `ssl`) present keys inside X.509 certificates, so
//! letterlock makes one from the key on the fly instead of using RFC 7250 raw public keys, which
//! few of them speak. Nothing in the certificate but its SubjectPublicKeyInfo means anything to
//! letterlock: the peer pins that key by its key id (SHA-256 of the SPKI DER) and ignores the
//! names, the dates and the certificate's own signature. The rest is filled in so that ordinary
//! parsers (rustls-webpki, OpenSSL) accept the certificate as well formed:
//!
//! - version 3, serial number = the first 16 bytes of the key id with the top bit cleared;
//! - issuer = subject = `CN=letterlock <key id>`;
//! - validity from 1970-01-01 to 9999-12-31 23:59:59 (RFC 5280's "no well-defined expiration
//!   date"), so a pinned key never fails on dates;
//! - critical basicConstraints `cA=FALSE` and keyUsage `digitalSignature`;
//! - signed with RSASSA-PSS (SHA-256, MGF1-SHA-256, salt 32) through [`Identity::sign`], so the
//!   private key is used where it lives and never exported.
//!
//! Invariant: the certificate's SPKI is byte for byte [`PublicKey::spki_der`], so the key id a
//! peer computes from the certificate is the key id letterlock prints.
//!
//! [`PublicKey::spki_der`]: crate::keys::PublicKey::spki_der

use crate::keys::{Identity, KeyError, KeyId};

/// `AlgorithmIdentifier` of RSASSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt (RFC 4055),
/// in the encoding OpenSSL writes and rustls-webpki recognises (its `alg-rsa-pss-sha256.der`):
/// exactly what [`Identity::sign`] produces.
pub(super) const RSA_PSS_SHA256_ALG_ID: &[u8] = &[
    0x30, 0x41, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a, 0x30, 0x34, 0xa0,
    0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00,
    0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08, 0x30,
    0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0xa2, 0x03,
    0x02, 0x01, 0x20,
];

/// `notBefore`: UTCTime 1970-01-01 00:00:00Z (RFC 5280 wants UTCTime up to 2049).
const NOT_BEFORE: &[u8] = b"700101000000Z";
/// `notAfter`: GeneralizedTime 9999-12-31 23:59:59Z, "no well-defined expiration date".
const NOT_AFTER: &[u8] = b"99991231235959Z";

/// Object identifiers used below.
const OID_COMMON_NAME: &[u64] = &[2, 5, 4, 3];
const OID_BASIC_CONSTRAINTS: &[u64] = &[2, 5, 29, 19];
const OID_KEY_USAGE: &[u64] = &[2, 5, 29, 15];
const OID_AUTHORITY_KEY_IDENTIFIER: &[u64] = &[2, 5, 29, 35];

/// Makes the self-signed certificate (DER) for `identity`'s key: one PSS signature.
pub fn self_signed(identity: &dyn Identity) -> Result<Vec<u8>, KeyError> {
    with_validity(identity, NOT_BEFORE, NOT_AFTER)
}

/// The certificate with the given validity (UTCTime `notBefore`, GeneralizedTime `notAfter`,
/// both as their DER contents): tests use it to show that dates never matter to a pinned key.
pub(super) fn with_validity(
    identity: &dyn Identity,
    not_before: &[u8],
    not_after: &[u8],
) -> Result<Vec<u8>, KeyError> {
    use yasna::models::TaggedDerValue;
    use yasna::tags::{TAG_GENERALIZEDTIME, TAG_UTCTIME};

    let public = identity.public();
    let id = public.id();
    let mut serial = [0u8; 16];
    serial.copy_from_slice(&id.0[..16]);
    let name = key_name(&id);
    let time = |tag, contents: &[u8]| {
        yasna::construct_der(|w| {
            w.write_tagged_der(&TaggedDerValue::from_tag_and_bytes(tag, contents.to_vec()))
        })
    };
    signed_by(
        identity,
        &Fields {
            serial,
            issuer: &name,
            subject: &name,
            not_before: &time(TAG_UTCTIME, not_before),
            not_after: &time(TAG_GENERALIZEDTIME, not_after),
            spki: public.spki_der(),
            authority_key_id: None,
        },
    )
}

/// The Name `CN=letterlock <key id>` (DER): the subject and issuer of a key's self-signed
/// certificate, and the issuer of the handshake keys it delegates to.
pub fn key_name(id: &KeyId) -> Vec<u8> {
    name(&format!("letterlock {id}"))
}

/// A Name of one common name (DER).
pub(super) fn name(common_name: &str) -> Vec<u8> {
    use yasna::models::ObjectIdentifier;
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_set(|w| {
                w.next().write_sequence(|w| {
                    w.next()
                        .write_oid(&ObjectIdentifier::from_slice(OID_COMMON_NAME));
                    w.next().write_utf8string(common_name);
                })
            })
        })
    })
}

/// Everything in a certificate but its signature, already encoded where it is DER.
pub(super) struct Fields<'a> {
    /// 16 bytes; made positive and first-byte-nonzero by [`signed_by`].
    pub serial: [u8; 16],
    /// Issuer and subject Names (DER).
    pub issuer: &'a [u8],
    pub subject: &'a [u8],
    /// `notBefore` and `notAfter`, each a whole UTCTime or GeneralizedTime (DER).
    pub not_before: &'a [u8],
    pub not_after: &'a [u8],
    /// The certified key's SubjectPublicKeyInfo (DER).
    pub spki: &'a [u8],
    /// For a delegated handshake key: the key id of the key that signs it, as the
    /// authorityKeyIdentifier's keyIdentifier (the 32 bytes of SHA-256, section 1).
    pub authority_key_id: Option<KeyId>,
}

/// An X.509 v3 certificate of `fields`, signed by `identity` with RSASSA-PSS (SHA-256, salt 32),
/// with critical basicConstraints `cA=FALSE` and keyUsage `digitalSignature`: one signature.
pub(super) fn signed_by(identity: &dyn Identity, fields: &Fields<'_>) -> Result<Vec<u8>, KeyError> {
    use yasna::models::ObjectIdentifier;

    let mut serial = fields.serial;
    // RFC 5280: a positive integer of at most 20 bytes. Clearing the top bit keeps it positive
    // and setting the lowest keeps the first byte nonzero, so it always encodes in 16 bytes.
    serial[0] = (serial[0] & 0x7f) | 0x01;
    let tbs = yasna::construct_der(|w| {
        w.write_sequence(|w| {
            // version [0] EXPLICIT v3 (2): rustls-webpki accepts only v3 certificates.
            w.next()
                .write_tagged(yasna::Tag::context(0), |w| w.write_u8(2));
            w.next().write_bigint_bytes(&serial, true);
            w.next().write_der(RSA_PSS_SHA256_ALG_ID);
            w.next().write_der(fields.issuer);
            w.next().write_sequence(|w| {
                w.next().write_der(fields.not_before);
                w.next().write_der(fields.not_after);
            });
            w.next().write_der(fields.subject);
            w.next().write_der(fields.spki);
            w.next().write_tagged(yasna::Tag::context(3), |w| {
                w.write_sequence(|w| {
                    // basicConstraints, critical, cA = FALSE (the default, so an empty SEQUENCE).
                    w.next().write_sequence(|w| {
                        w.next()
                            .write_oid(&ObjectIdentifier::from_slice(OID_BASIC_CONSTRAINTS));
                        w.next().write_bool(true);
                        w.next()
                            .write_bytes(&yasna::construct_der(|w| w.write_sequence(|_| {})));
                    });
                    // keyUsage, critical, digitalSignature (bit 0): the key signs handshakes.
                    w.next().write_sequence(|w| {
                        w.next()
                            .write_oid(&ObjectIdentifier::from_slice(OID_KEY_USAGE));
                        w.next().write_bool(true);
                        w.next().write_bytes(&yasna::construct_der(|w| {
                            w.write_bitvec_bytes(&[0x80], 1)
                        }));
                    });
                    // authorityKeyIdentifier, not critical: [0] IMPLICIT keyIdentifier.
                    if let Some(id) = &fields.authority_key_id {
                        w.next().write_sequence(|w| {
                            w.next().write_oid(&ObjectIdentifier::from_slice(
                                OID_AUTHORITY_KEY_IDENTIFIER,
                            ));
                            w.next().write_bytes(&yasna::construct_der(|w| {
                                w.write_sequence(|w| {
                                    w.next().write_tagged_implicit(yasna::Tag::context(0), |w| {
                                        w.write_bytes(&id.0)
                                    })
                                })
                            }));
                        });
                    }
                })
            });
        })
    });
    let signature = identity.sign(&tbs)?;
    Ok(yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_der(&tbs);
            w.next().write_der(RSA_PSS_SHA256_ALG_ID);
            w.next().write_bitvec_bytes(&signature, signature.len() * 8);
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    #[test]
    fn the_certificate_carries_the_key_and_its_own_pss_signature_verifies() {
        let key = PrivateKey::generate(2048).unwrap();
        let der = self_signed(&key).unwrap();
        let cert_der = rustls::pki_types::CertificateDer::from(der.as_slice());
        let cert = webpki::EndEntityCert::try_from(&cert_der).expect("webpki parses it");
        let spki = cert.subject_public_key_info();
        assert_eq!(spki.as_ref(), key.public().spki_der());
        assert_eq!(KeyId::of_spki(spki.as_ref()), key.public().id());

        // The signature over the TBSCertificate is a valid RSA-PSS-SHA256 signature by the key:
        // find the TBS (the first element of the outer SEQUENCE) and check it.
        let (tbs, sig) = yasna::parse_der(&der, |r| {
            r.read_sequence(|r| {
                let tbs = r.next().read_der()?;
                let _alg = r.next().read_der()?;
                let (sig, _) = r.next().read_bitvec_bytes()?;
                Ok((tbs, sig))
            })
        })
        .unwrap();
        assert!(key.public().verify_pss(&tbs, &sig));
    }

    #[test]
    fn the_alg_id_constant_is_rsassa_pss_sha256_salt_32() {
        // Re-derive the constant from its ASN.1 so a typo in the bytes cannot hide.
        use yasna::models::ObjectIdentifier;
        let sha256 = |w: yasna::DERWriter| {
            w.write_sequence(|w| {
                w.next().write_oid(&ObjectIdentifier::from_slice(&[
                    2, 16, 840, 1, 101, 3, 4, 2, 1,
                ]));
                w.next().write_null();
            })
        };
        let built = yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next().write_oid(&ObjectIdentifier::from_slice(&[
                    1, 2, 840, 113549, 1, 1, 10,
                ]));
                w.next().write_sequence(|w| {
                    w.next().write_tagged(yasna::Tag::context(0), sha256);
                    w.next().write_tagged(yasna::Tag::context(1), |w| {
                        w.write_sequence(|w| {
                            w.next().write_oid(&ObjectIdentifier::from_slice(&[
                                1, 2, 840, 113549, 1, 1, 8,
                            ]));
                            sha256(w.next());
                        })
                    });
                    w.next()
                        .write_tagged(yasna::Tag::context(2), |w| w.write_u8(32));
                })
            })
        });
        assert_eq!(built, RSA_PSS_SHA256_ALG_ID);
    }
}
