//! Access tokens at rest, in the Go proxy's format.
//!
//! An operator must be able to swap the Go binary for this one with the same
//! `SYNCV3_SECRET` and keep every device logged in, so the format is copied exactly:
//! key = SHA-256 of the secret string's bytes, AES-256-GCM with a random 12-byte nonce and
//! no associated data, stored as `hex(nonce) hex(ciphertext || tag)`. Tokens are found by
//! [`token_hash`], which needs no key.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use sha2::{Digest, Sha256};

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Why a stored token could not be decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The text is not `hex(12-byte nonce) hex(ciphertext and 16-byte tag)`.
    #[error("stored token is malformed: {0}")]
    Malformed(&'static str),
    /// The tag did not verify: another `SYNCV3_SECRET` encrypted it, or it was altered.
    #[error("stored token does not decrypt with this SYNCV3_SECRET (other secret or altered)")]
    Undecryptable,
    /// It decrypted, but to bytes that are not UTF-8.
    #[error("decrypted token is not UTF-8")]
    NotUtf8,
}

/// Encrypts and decrypts access tokens with the key derived from `SYNCV3_SECRET`.
#[derive(Clone)]
pub struct TokenCipher {
    cipher: Aes256Gcm,
}

impl TokenCipher {
    /// The secret is hashed as given, without trimming or hex-decoding, as Go does.
    pub fn new(secret: &str) -> Self {
        let key: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        Self {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key)),
        }
    }

    /// Encrypts with a fresh random nonce, so the same token never gives the same text.
    pub fn encrypt(&self, token: &str) -> String {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        self.encrypt_with_nonce(token, &nonce)
    }

    fn encrypt_with_nonce(
        &self,
        token: &str,
        nonce: &Nonce<<Aes256Gcm as AeadCore>::NonceSize>,
    ) -> String {
        let sealed = self
            .cipher
            .encrypt(nonce, token.as_bytes())
            // AES-GCM refuses only plaintexts above 64 GiB; request bodies are far smaller.
            .expect("AES-GCM encrypts any access token");
        let mut out = String::with_capacity(2 * (NONCE_LEN + sealed.len()) + 1);
        out.push_str(&hex::encode(nonce));
        out.push(' ');
        out.push_str(&hex::encode(sealed));
        out
    }

    /// Decrypts text written by [`TokenCipher::encrypt`] or by the Go proxy.
    pub fn decrypt(&self, stored: &str) -> Result<String, TokenError> {
        let (nonce_hex, sealed_hex) = stored.split_once(' ').ok_or(TokenError::Malformed(
            "no space between nonce and ciphertext",
        ))?;
        let nonce =
            hex::decode(nonce_hex).map_err(|_| TokenError::Malformed("nonce is not hex"))?;
        if nonce.len() != NONCE_LEN {
            return Err(TokenError::Malformed("nonce is not 12 bytes"));
        }
        let sealed =
            hex::decode(sealed_hex).map_err(|_| TokenError::Malformed("ciphertext is not hex"))?;
        if sealed.len() < TAG_LEN {
            return Err(TokenError::Malformed("ciphertext is shorter than the tag"));
        }
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(&nonce), sealed.as_slice())
            .map_err(|_| TokenError::Undecryptable)?;
        String::from_utf8(plain).map_err(|_| TokenError::NotUtf8)
    }
}

impl std::fmt::Debug for TokenCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key must never reach a log line.
        f.debug_struct("TokenCipher").finish_non_exhaustive()
    }
}

/// Lowercase hex SHA-256 of the plaintext token: the lookup key, as in the Go proxy.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0b5a1c3f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a29180716f5e4d3c2b1a09f";
    const TOKEN: &str = "syt_YWxpY2U_lLkWdWJzVdbqqpRePLnK_0kgvfY";
    /// Computed independently with Python's `cryptography` (AESGCM, key = sha256(SECRET),
    /// nonce = bytes 1..=12, no AAD), i.e. what Go's `Seal` writes.
    const STORED: &str = "0102030405060708090a0b0c cf46e1125540ee39e73a23a177fd8882bb5355f8f983c1c6bad0062aa996e8ece6e7e64f326bf60e3f1a5ef32415c93ca44f85e759e161";

    #[test]
    fn a_token_round_trips() {
        let cipher = TokenCipher::new(SECRET);
        assert_eq!(cipher.decrypt(&cipher.encrypt(TOKEN)).unwrap(), TOKEN);
        assert_eq!(cipher.decrypt(&cipher.encrypt("")).unwrap(), "");
    }

    #[test]
    fn two_encryptions_of_one_token_differ() {
        let cipher = TokenCipher::new(SECRET);
        assert_ne!(cipher.encrypt(TOKEN), cipher.encrypt(TOKEN));
    }

    #[test]
    fn the_stored_form_is_lowercase_hex_nonce_space_sealed() {
        let stored = TokenCipher::new(SECRET).encrypt(TOKEN);
        let (nonce, sealed) = stored.split_once(' ').unwrap();
        assert_eq!(nonce.len(), 2 * NONCE_LEN);
        assert_eq!(sealed.len(), 2 * (TOKEN.len() + TAG_LEN));
        assert!(stored
            .chars()
            .all(|c| c == ' ' || c.is_ascii_digit() || ('a'..='f').contains(&c)));
    }

    #[test]
    fn another_secret_cannot_decrypt() {
        let stored = TokenCipher::new(SECRET).encrypt(TOKEN);
        let other = TokenCipher::new("a different secret");
        assert_eq!(other.decrypt(&stored), Err(TokenError::Undecryptable));
    }

    #[test]
    fn a_value_written_by_the_go_proxy_decrypts() {
        assert_eq!(TokenCipher::new(SECRET).decrypt(STORED).unwrap(), TOKEN);
    }

    #[test]
    fn a_fixed_nonce_reproduces_the_go_value() {
        let nonce: [u8; NONCE_LEN] = std::array::from_fn(|i| i as u8 + 1);
        let cipher = TokenCipher::new(SECRET);
        assert_eq!(
            cipher.encrypt_with_nonce(TOKEN, Nonce::from_slice(&nonce)),
            STORED
        );
    }

    #[test]
    fn an_altered_ciphertext_is_rejected() {
        let mut altered = STORED.to_owned().into_bytes();
        let last = altered.len() - 1;
        altered[last] = if altered[last] == b'0' { b'1' } else { b'0' };
        let altered = String::from_utf8(altered).unwrap();
        assert_eq!(
            TokenCipher::new(SECRET).decrypt(&altered),
            Err(TokenError::Undecryptable)
        );
    }

    #[test]
    fn malformed_text_is_an_error_not_a_panic() {
        let cipher = TokenCipher::new(SECRET);
        let (nonce, sealed) = STORED.split_once(' ').unwrap();
        let cases = [
            String::new(),
            " ".to_owned(),
            STORED.replace(' ', ""),
            format!("{nonce}{sealed}"),
            format!("{} {sealed}", &nonce[1..]),
            format!("{nonce} {}", &sealed[1..]),
            format!("{} {sealed}", &nonce[2..]),
            format!("{nonce} {}", &sealed[..2 * TAG_LEN - 2]),
            format!("{nonce} "),
            format!("zz{} {sealed}", &nonce[2..]),
            format!("{nonce} zz{}", &sealed[2..]),
            format!("{nonce}  {sealed}"),
            "é é".to_owned(),
        ];
        for case in cases {
            assert!(
                matches!(cipher.decrypt(&case), Err(TokenError::Malformed(_))),
                "{case:?} gave {:?}",
                cipher.decrypt(&case)
            );
        }
    }

    #[test]
    fn plaintext_that_is_not_utf8_is_an_error() {
        let cipher = TokenCipher::new(SECRET);
        let nonce = [7u8; NONCE_LEN];
        let sealed = cipher
            .cipher
            .encrypt(Nonce::from_slice(&nonce), &[0xff, 0xfe][..])
            .unwrap();
        let stored = format!("{} {}", hex::encode(nonce), hex::encode(sealed));
        assert_eq!(cipher.decrypt(&stored), Err(TokenError::NotUtf8));
    }

    #[test]
    fn the_token_hash_is_lowercase_hex_sha256() {
        assert_eq!(
            token_hash(TOKEN),
            "4f0708896f895662c964488cad5f4ff7742ceb90f844512dcc86a757a02e93cb"
        );
    }
}
