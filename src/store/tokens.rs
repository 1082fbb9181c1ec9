//! placeholder, replaced by the token cipher
pub struct TokenCipher;
#[derive(Debug)]
pub struct TokenError;
impl TokenCipher {
    pub fn new(_s: &str) -> Self { TokenCipher }
    pub fn encrypt(&self, t: &str) -> String { t.to_owned() }
    pub fn decrypt(&self, t: &str) -> Result<String, TokenError> { Ok(t.to_owned()) }
}
pub fn token_hash(t: &str) -> String { t.to_owned() }
