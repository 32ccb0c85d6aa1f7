//! API keys: random bearer tokens, of which the database keeps only the SHA-256 (a token has 256
//! bits from the OS generator, so a fast hash is as safe as a slow one and costs nothing per
//! request), and who a request comes from once its key is checked ([`Caller`]).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::job::timestamp;

/// Every token starts with this, so that a leaked one is recognisable (secret scanners, logs).
pub const TOKEN_PREFIX: &str = "dgxm_";
/// Characters of the token kept in clear to tell keys apart: the prefix and 8 hex digits.
const SHOWN_CHARS: usize = TOKEN_PREFIX.len() + 8;

/// A key as the database keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    /// The token's first characters, e.g. `dgxm_3f9a1c0b`.
    pub prefix: String,
    /// Sees and deletes every job, not only its own.
    pub admin: bool,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    pub fn view(&self) -> KeyView {
        KeyView {
            id: self.id.to_string(),
            name: self.name.clone(),
            prefix: self.prefix.clone(),
            admin: self.admin,
            created_at: timestamp(self.created_at),
            revoked_at: self.revoked_at.map(timestamp),
        }
    }
}

/// A key in `dgx-music keys list --json`.
#[derive(Debug, Serialize)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub admin: bool,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

/// A new key and its token, which exists only here: the store keeps its hash.
pub struct NewKey {
    pub key: ApiKey,
    pub token: String,
    pub hash: String,
}

impl NewKey {
    pub fn generate(name: &str, admin: bool) -> std::io::Result<NewKey> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(std::io::Error::other)?;
        let token = format!("{TOKEN_PREFIX}{}", hex::encode(secret));
        let key = ApiKey {
            id: Uuid::new_v4(),
            name: name.to_string(),
            prefix: token[..SHOWN_CHARS].to_string(),
            admin,
            created_at: Utc::now(),
            revoked_at: None,
        };
        Ok(NewKey { hash: hash_token(&token), key, token })
    }
}

/// The stored form of a token: lowercase hex SHA-256.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Caller {
    /// The server checks no keys (loopback without keys, or `--insecure-no-auth`): one trusted user.
    Open,
    Key(ApiKey),
}

impl Caller {
    /// The owner recorded on what this caller makes.
    pub fn owner(&self) -> Option<Uuid> {
        match self {
            Caller::Open => None,
            Caller::Key(key) => Some(key.id),
        }
    }

    /// Whether this caller may see (and delete) something of `owner`.
    pub fn sees(&self, owner: Option<Uuid>) -> bool {
        match self {
            Caller::Open => true,
            Caller::Key(key) => key.admin || owner == Some(key.id),
        }
    }

    /// The owner to filter lists by: `None` lists everything.
    pub fn filter(&self) -> Option<Uuid> {
        match self {
            Caller::Key(key) if !key.admin => Some(key.id),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_only_their_hash_is_kept() {
        let (a, b) = (NewKey::generate("laptop", false).unwrap(), NewKey::generate("laptop", false).unwrap());
        assert_ne!(a.token, b.token);
        assert!(a.token.starts_with(TOKEN_PREFIX) && a.token.len() == TOKEN_PREFIX.len() + 64, "{}", a.token);
        assert_eq!(a.key.prefix, a.token[..13]);
        assert_eq!(a.hash, hash_token(&a.token));
        assert_ne!(a.hash, hash_token(&b.token));
        assert!(!a.hash.contains(&a.token[TOKEN_PREFIX.len()..]));
        // SHA-256("abc"), FIPS 180-2's example.
        assert_eq!(hash_token("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn a_key_sees_its_own_an_admin_and_an_open_server_see_everything() {
        let mine = NewKey::generate("me", false).unwrap().key;
        let admin = NewKey::generate("root", true).unwrap().key;
        let other = Some(Uuid::new_v4());
        let me = Caller::Key(mine.clone());
        assert!(me.sees(Some(mine.id)) && !me.sees(other) && !me.sees(None));
        assert_eq!(me.filter(), Some(mine.id));
        for all in [Caller::Key(admin), Caller::Open] {
            assert!(all.sees(other) && all.sees(None));
            assert_eq!(all.filter(), None);
        }
        assert_eq!((Caller::Open.owner(), me.owner()), (None, Some(mine.id)));
    }
}
