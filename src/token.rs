//! Access tokens: `cs1.<client>.<scope>.<expiry>.<nonce>.<mac>`, where mac is
//! HMAC-SHA256 (base64url) of everything before it, keyed by a secret kept in
//! the store's directory and created on first use.

use crate::error::{Error, ErrorKind, Result};
use crate::ids::ClientId;
use crate::store::Store;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const KEY_FILE: &str = "token.key";
const PREFIX: &str = "cs1";

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read layers, recipes and chunks; fetch and acknowledge this client's dedup tarballs.
    Pull,
    /// Upload chunks and commit layers (and everything pull allows).
    Push,
    /// Everything, for every client.
    Admin,
}

impl std::str::FromStr for Scope {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Scope::parse(s)
    }
}

impl Scope {
    /// Parse `pull`, `push` or `admin`.
    pub fn parse(s: &str) -> Result<Scope> {
        match s {
            "pull" => Ok(Scope::Pull),
            "push" => Ok(Scope::Push),
            "admin" => Ok(Scope::Admin),
            _ => Err(Error::invalid(format!("unknown scope {s:?}: use pull, push or admin"))),
        }
    }

    /// `pull`, `push` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Pull => "pull",
            Scope::Push => "push",
            Scope::Admin => "admin",
        }
    }

    /// Whether a token of this scope may do what `need` requires.
    pub fn allows(self, need: Scope) -> bool {
        self >= need
    }
}

/// A verified token's claims.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Claims {
    /// Whom it was issued to.
    pub client: ClientId,
    /// What it allows.
    pub scope: Scope,
    /// Unix seconds after which it is refused.
    pub expires: u64,
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn mac(key: &[u8], msg: &str) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(msg.as_bytes());
    m
}

/// Checks tokens without touching the index on every request.
#[derive(Clone)]
pub struct TokenVerifier {
    key: [u8; 32],
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenVerifier(..)")
    }
}

impl TokenVerifier {
    /// Verify a token's signature and expiry.
    pub fn verify(&self, token: &str) -> Result<Claims> {
        let denied = |why: &str| Error::new(ErrorKind::Denied, format!("token refused: {why}"));
        let (body, sig) = token.rsplit_once('.').ok_or_else(|| denied("malformed"))?;
        let sig = B64.decode(sig).map_err(|_| denied("malformed signature"))?;
        mac(&self.key, body).verify_slice(&sig).map_err(|_| denied("bad signature"))?;
        // From the right: a client name may itself hold dots.
        let rest = body.strip_prefix(PREFIX).and_then(|r| r.strip_prefix('.')).ok_or_else(|| denied("malformed"))?;
        let parts: Vec<&str> = rest.rsplitn(4, '.').collect();
        let [_nonce, expires, scope, client] = parts[..] else { return Err(denied("malformed")) };
        let expires: u64 = expires.parse().map_err(|_| denied("malformed expiry"))?;
        if expires <= now() {
            return Err(denied("expired"));
        }
        Ok(Claims { client: ClientId::new(client)?, scope: Scope::parse(scope)?, expires })
    }
}

/// The store's signing key, `<store>/token.key` (32 bytes, mode 0600),
/// created on first use. Kept outside the index so tokens can be issued
/// while a server holds the store open.
fn key_at(dir: &Path) -> Result<[u8; 32]> {
    let path = dir.join(KEY_FILE);
    match std::fs::read(&path) {
        Ok(k) => return k.try_into().map_err(|_| Error::corrupt(format!("{} is not a 32-byte key", path.display()))),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::io(format!("reading {}", path.display()), e))
        }
        Err(_) => {}
    }
    // A new key only where a store is or may be made.
    crate::store::check_store_dir(dir)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let mut k = [0u8; 32];
    getrandom::getrandom(&mut k)
        .map_err(|e| Error::io("no randomness for the token key", std::io::Error::other(e.to_string())))?;
    let tmp = dir.join(format!("{KEY_FILE}.{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
    f.write_all(&k).and_then(|_| f.sync_all()).map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    // Two issuers racing: the first key to land wins; the loser reads it.
    match std::fs::hard_link(&tmp, &path) {
        Ok(()) => {
            let _ = std::fs::remove_file(&tmp);
            Ok(k)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let _ = std::fs::remove_file(&tmp);
            key_at(dir)
        }
        Err(e) => Err(Error::io(format!("installing {}", path.display()), e)),
    }
}

/// Issue a token for `client` with `scope`, valid for `ttl`, signed with the
/// key of the store at `dir` (the store itself need not be openable).
pub fn issue_token_at(dir: &Path, client: &ClientId, scope: Scope, ttl: Duration) -> Result<String> {
    let key = key_at(dir)?;
    let mut nonce = [0u8; 9];
    getrandom::getrandom(&mut nonce).map_err(|e| Error::io("no randomness", std::io::Error::other(e.to_string())))?;
    let expires = now()
        .checked_add(ttl.as_secs())
        .ok_or_else(|| Error::invalid(format!("token lifetime of {} s is too long", ttl.as_secs())))?;
    let body = format!("{PREFIX}.{client}.{}.{expires}.{}", scope.as_str(), B64.encode(nonce));
    let sig = B64.encode(mac(&key, &body).finalize().into_bytes());
    Ok(format!("{body}.{sig}"))
}

impl Store {
    /// Issue a token for `client` with `scope`, valid for `ttl`.
    pub fn issue_token(&self, client: &ClientId, scope: Scope, ttl: Duration) -> Result<String> {
        issue_token_at(&self.dir, client, scope, ttl)
    }

    /// A verifier for this store's tokens.
    pub fn token_verifier(&self) -> Result<TokenVerifier> {
        Ok(TokenVerifier { key: key_at(&self.dir)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_verify_and_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let c = ClientId::new("edge-3").unwrap();
        let t = s.issue_token(&c, Scope::Pull, Duration::from_secs(60)).unwrap();
        let v = s.token_verifier().unwrap();
        let claims = v.verify(&t).unwrap();
        assert_eq!((claims.client, claims.scope), (c.clone(), Scope::Pull));
        // Forged: change the scope, keep the signature.
        let forged = t.replacen(".pull.", ".admin.", 1);
        assert_eq!(v.verify(&forged).unwrap_err().kind(), ErrorKind::Denied);
        // Another store's key does not verify it.
        let other = tempfile::tempdir().unwrap();
        assert!(Store::open(other.path()).unwrap().token_verifier().unwrap().verify(&t).is_err());
        // Expired.
        let old = s.issue_token(&c, Scope::Pull, Duration::from_secs(0)).unwrap();
        assert!(v.verify(&old).unwrap_err().to_string().contains("expired"));
        assert!(Scope::Admin.allows(Scope::Push) && !Scope::Pull.allows(Scope::Push));
        // Client names may hold dots, as the token's fields do.
        let dotted = ClientId::new("edge.eu-1.b").unwrap();
        let t = s.issue_token(&dotted, Scope::Push, Duration::from_secs(60)).unwrap();
        let claims = v.verify(&t).unwrap();
        assert_eq!((claims.client, claims.scope), (dotted, Scope::Push));
        assert!(v.verify(&t.replacen("edge.eu-1.b", "edge.eu-1", 1)).is_err());
    }
}
