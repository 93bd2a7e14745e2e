//! Signatures of the manifest: who made a dump, not only that its parts
//! agree.
//!
//! The manifest's integrity checksum and the core's hashes show that a core
//! and its manifest are consistent; whoever can rewrite both can make them
//! consistent again. `--sign KEY` adds `<manifest>.sig`, an SSH signature
//! (OpenSSH's SSHSIG format, `PROTOCOL.sshsig`) over the manifest's exact
//! bytes in the namespace [`NAMESPACE`]. Since the manifest holds the core's
//! hashes, the signature covers the core too. OpenSSH alone checks it:
//!
//! ```sh
//! ssh-keygen -Y verify -f allowed_signers -I IDENTITY \
//!     -n coresnap-manifest@coresnap -s core.1234.json.sig < core.1234.json
//! ```
//!
//! and `coresnap verify --allowed-signers FILE --identity ID` does the same
//! check ([`check`]), reading the allowed signers file in ssh-keygen's format
//! ([`AllowedSigners`]).

use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey, SshSig};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The SSHSIG namespace of a manifest signature: a signature made for
/// another purpose (`git`, `file`, ...) with the same key is not accepted as
/// one, and this one is not accepted elsewhere.
pub const NAMESPACE: &str = "coresnap-manifest@coresnap";

/// ssh-keygen's default for `-Y sign`.
const HASH: HashAlg = HashAlg::Sha512;

/// Larger than any OpenSSH key, signature or sensible allowed signers file;
/// a bound on what a file given to coresnap can make it read.
const KEY_FILE_LIMIT: u64 = 64 << 10;
const SIGNATURE_FILE_LIMIT: u64 = 64 << 10;
const ALLOWED_SIGNERS_LIMIT: u64 = 4 << 20;

/// The signature's name for the manifest at `manifest`: `<manifest>.sig`,
/// as `ssh-keygen -Y sign` names it.
pub fn signature_path_for(manifest: &Path) -> PathBuf {
    let mut name = manifest.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("cannot read the signing key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not an OpenSSH private key ({source}); --sign takes a key as ssh-keygen writes it (`ssh-keygen -t ed25519 -N '' -f KEY`, or convert an old PEM key with `ssh-keygen -p -f KEY`)"
    )]
    Parse {
        path: PathBuf,
        source: ssh_key::Error,
    },
    #[error(
        "{path} is protected by a passphrase, which coresnap does not ask for (it runs unattended). Use a key without a passphrase that only root can read, or dump without --sign and sign afterwards with ssh-agent: ssh-keygen -Y sign -f {path} -n {NAMESPACE} MANIFEST.json"
    )]
    Encrypted { path: PathBuf },
    #[error(
        "{path} can be read by others (mode {mode:04o}): whoever can read it can sign dumps as this key. Make it readable by its owner only: chmod 600 {path}"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error(
        "{path}: coresnap signs with ed25519 or ECDSA keys (`ssh-keygen -t ed25519`), and this one is {algorithm}{}",
        if matches!(.algorithm, Algorithm::Rsa { .. }) { " (RSA is left out: the Rust RSA implementation's private-key operations are not constant-time)" } else { "" }
    )]
    Unsupported { path: PathBuf, algorithm: Algorithm },
    #[error("cannot sign with {path}: {source}")]
    Sign {
        path: PathBuf,
        source: ssh_key::Error,
    },
}

/// A private key loaded and tried once, so that a key that cannot sign is
/// refused before the target is touched.
pub struct SigningKey {
    key: PrivateKey,
    path: PathBuf,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("path", &self.path)
            .field("key", &self.describe())
            .finish()
    }
}

impl SigningKey {
    /// Reads an OpenSSH private key file (`-----BEGIN OPENSSH PRIVATE
    /// KEY-----`): ed25519 or ECDSA, without a passphrase.
    pub fn load(path: &Path) -> Result<SigningKey, SignError> {
        let read_err = |source| SignError::Read {
            path: path.to_path_buf(),
            source,
        };
        let text = read_limited(path, KEY_FILE_LIMIT).map_err(read_err)?;
        let text = String::from_utf8(text).map_err(|_| {
            read_err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not text",
            ))
        })?;
        let key = PrivateKey::from_openssh(text.as_bytes()).map_err(|source| SignError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        // As ssh and ssh-keygen do: a key others can read is not only
        // this signer's.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(read_err)?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(SignError::Exposed {
                path: path.to_path_buf(),
                mode: mode & 0o777,
            });
        }
        if key.is_encrypted() {
            return Err(SignError::Encrypted {
                path: path.to_path_buf(),
            });
        }
        let algorithm = key.algorithm();
        if !matches!(algorithm, Algorithm::Ed25519 | Algorithm::Ecdsa { .. }) {
            return Err(SignError::Unsupported {
                path: path.to_path_buf(),
                algorithm,
            });
        }
        let key = SigningKey {
            key,
            path: path.to_path_buf(),
        };
        key.sign(b"")?;
        Ok(key)
    }

    /// The armored SSH signature (`-----BEGIN SSH SIGNATURE-----`) of
    /// `message`, the exact bytes of the manifest file.
    pub fn sign(&self, message: &[u8]) -> Result<String, SignError> {
        let sign_err = |source| SignError::Sign {
            path: self.path.clone(),
            source,
        };
        self.key
            .sign(NAMESPACE, HASH, message)
            .and_then(|signature| signature.to_pem(LineEnding::LF))
            .map_err(sign_err)
    }

    /// `ED25519 SHA256:...`, as `ssh-keygen -l` shows the key.
    pub fn describe(&self) -> String {
        describe_key(self.key.public_key())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn describe_key(key: &PublicKey) -> String {
    let kind = match key.algorithm() {
        Algorithm::Ed25519 => "ED25519".to_string(),
        Algorithm::Ecdsa { curve } => format!("ECDSA {curve}"),
        other => other.to_string(),
    };
    format!("{kind} {}", key.fingerprint(HashAlg::Sha256))
}

/// Reads at most `limit` bytes of a regular file; a longer file is an
/// error, not truncated. Opened without blocking and checked before any
/// read, so that a FIFO or a device planted beside a manifest cannot hang
/// `verify` or feed it endlessly.
fn read_limited(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut data = Vec::new();
    file.take(limit + 1).read_to_end(&mut data)?;
    if data.len() as u64 > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("longer than {limit} bytes"),
        ));
    }
    Ok(data)
}

/// Why a signature does not show that an allowed signer made the manifest.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error(
        "no signature at {path} (a signed dump writes one next to its manifest; dumped without --sign?)"
    )]
    Missing { path: PathBuf },
    #[error("cannot read the signature {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not an SSH signature: {source}")]
    Malformed {
        path: PathBuf,
        source: ssh_key::Error,
    },
    #[error(
        "the signature is for namespace {found:?}, not {NAMESPACE:?}: it was not made for a coresnap manifest"
    )]
    Namespace { found: String },
    #[error(
        "the signature was made by {key}, a kind of key coresnap does not check (it checks ed25519 and ECDSA; ssh-keygen -Y verify checks this one)"
    )]
    Unsupported { key: String },
    #[error(
        "the signature by {key} does not match the manifest: the manifest was changed after it was signed, or the signature belongs to another manifest"
    )]
    Mismatch { key: String },
    #[error("the key that signed ({key}) is not an allowed signer for {identity:?}{}", why_not(.notes))]
    NotAllowed {
        key: String,
        identity: String,
        notes: Vec<String>,
    },
    #[error("cannot read the allowed signers file {path}: {source}")]
    ReadSigners {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("allowed signers file {path}, line {line}: {problem}")]
    SignersSyntax {
        path: PathBuf,
        line: usize,
        problem: String,
    },
}

fn why_not(notes: &[String]) -> String {
    if notes.is_empty() {
        " in the allowed signers file".into()
    } else {
        format!(" ({})", notes.join("; "))
    }
}

/// Who signed: the identity asked for and the key that matched it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedBy {
    pub identity: String,
    /// `ED25519 SHA256:...`.
    pub key: String,
    /// Line of the allowed signers file that allowed it.
    pub line: usize,
}

/// Checks the armored signature at `signature_path` over `manifest` (the
/// bytes that were parsed and compared, not a second read) against the
/// allowed signers, for `identity`, at time `now`: what `ssh-keygen -Y
/// verify -n coresnap-manifest@coresnap` checks.
pub fn check(
    manifest: &[u8],
    signature_path: &Path,
    signers: &AllowedSigners,
    identity: &str,
    now: SystemTime,
) -> Result<SignedBy, SignatureError> {
    let armored = match read_limited(signature_path, SIGNATURE_FILE_LIMIT) {
        Ok(a) => a,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SignatureError::Missing {
                path: signature_path.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(SignatureError::Read {
                path: signature_path.to_path_buf(),
                source,
            });
        }
    };
    check_armored(manifest, &armored, signature_path, signers, identity, now)
}

/// [`check`] of a signature already read (`armored`, the `.sig` file's
/// bytes; `signature_path` names it in errors).
pub fn check_armored(
    manifest: &[u8],
    armored: &[u8],
    signature_path: &Path,
    signers: &AllowedSigners,
    identity: &str,
    now: SystemTime,
) -> Result<SignedBy, SignatureError> {
    let signature = SshSig::from_pem(armored).map_err(|source| SignatureError::Malformed {
        path: signature_path.to_path_buf(),
        source,
    })?;
    if signature.namespace() != NAMESPACE {
        return Err(SignatureError::Namespace {
            found: signature.namespace().to_string(),
        });
    }
    let signer = PublicKey::from(signature.public_key().clone());
    let key = describe_key(&signer);
    if !matches!(
        signer.algorithm(),
        Algorithm::Ed25519 | Algorithm::Ecdsa { .. }
    ) {
        return Err(SignatureError::Unsupported { key });
    }
    signer
        .verify(NAMESPACE, manifest, &signature)
        .map_err(|_| SignatureError::Mismatch { key: key.clone() })?;
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut notes = Vec::new();
    for entry in &signers.entries {
        if entry.key.key_data() != signature.public_key() {
            continue;
        }
        let at = format!("line {}", entry.line);
        if entry.cert_authority {
            notes.push(format!("{at} names it as a certificate authority, and coresnap signatures are made by plain keys"));
        } else if matches_pattern_list(identity, &entry.principals) != Some(true) {
            notes.push(format!("{at} allows it for {:?} only", entry.principals));
        } else if entry
            .namespaces
            .as_deref()
            .is_some_and(|n| matches_pattern_list(NAMESPACE, n) != Some(true))
        {
            notes.push(format!(
                "{at} allows it for namespaces {:?} only",
                entry.namespaces.as_deref().unwrap_or_default()
            ));
        } else if entry.valid_after.is_some_and(|t| now < t) {
            notes.push(format!("{at}: not valid yet (valid-after)"));
        } else if entry.valid_before.is_some_and(|t| now > t) {
            notes.push(format!("{at}: expired (valid-before)"));
        } else {
            return Ok(SignedBy {
                identity: identity.to_string(),
                key,
                line: entry.line,
            });
        }
    }
    Err(SignatureError::NotAllowed {
        key,
        identity: identity.to_string(),
        notes,
    })
}

/// An allowed signers file, as `ssh-keygen -Y verify -f` reads it (see
/// ssh-keygen(1), "ALLOWED SIGNERS"): one key per line, `principals
/// [options] keytype base64 [comment]`.
#[derive(Debug, Clone)]
pub struct AllowedSigners {
    entries: Vec<AllowedSigner>,
}

#[derive(Debug, Clone)]
struct AllowedSigner {
    line: usize,
    /// Comma-separated patterns (`*`, `?`, `!` to exclude).
    principals: String,
    key: PublicKey,
    cert_authority: bool,
    namespaces: Option<String>,
    /// Seconds since the epoch, UTC.
    valid_after: Option<i64>,
    valid_before: Option<i64>,
}

impl AllowedSigners {
    pub fn load(path: &Path) -> Result<AllowedSigners, SignatureError> {
        let read_err = |source| SignatureError::ReadSigners {
            path: path.to_path_buf(),
            source,
        };
        let bytes = read_limited(path, ALLOWED_SIGNERS_LIMIT).map_err(read_err)?;
        let text = String::from_utf8(bytes).map_err(|_| {
            read_err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "not UTF-8 text",
            ))
        })?;
        AllowedSigners::parse(&text).map_err(|(line, problem)| SignatureError::SignersSyntax {
            path: path.to_path_buf(),
            line,
            problem,
        })
    }

    /// Parses the text of an allowed signers file; an error names the line
    /// (counted from 1). A line coresnap cannot read fails the whole file
    /// rather than being skipped, so that nothing is allowed by accident.
    pub fn parse(text: &str) -> Result<AllowedSigners, (usize, String)> {
        let mut entries = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            entries.push(parse_line(line, number).map_err(|problem| (number, problem))?);
        }
        Ok(AllowedSigners { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn parse_line(line: &str, number: usize) -> Result<AllowedSigner, String> {
    let (principals, rest) = next_field(line)?;
    // Quotes only group: `"a b",c` is the principals `a b` and `c`.
    let principals = principals.replace('"', "");
    if principals.is_empty() {
        return Err("no principals".into());
    }
    let (options, key_text) = if starts_with_key_type(rest) {
        (None, rest)
    } else {
        let (options, rest) = next_field(rest)?;
        (Some(options), rest)
    };
    let mut entry = AllowedSigner {
        line: number,
        principals,
        key: PublicKey::from_openssh(key_text)
            .map_err(|e| format!("cannot read the public key: {e}"))?,
        cert_authority: false,
        namespaces: None,
        valid_after: None,
        valid_before: None,
    };
    for option in options.map(split_options).transpose()?.unwrap_or_default() {
        let (name, value) = match option.split_once('=') {
            Some((name, value)) => (name, Some(unquote(value)?)),
            None => (option.as_str(), None),
        };
        match (name.to_ascii_lowercase().as_str(), value) {
            ("cert-authority", None) => entry.cert_authority = true,
            ("namespaces", Some(v)) => entry.namespaces = Some(v),
            ("valid-after", Some(v)) => entry.valid_after = Some(parse_time(&v)?),
            ("valid-before", Some(v)) => entry.valid_before = Some(parse_time(&v)?),
            _ => return Err(format!("unknown option {option:?}")),
        }
    }
    Ok(entry)
}

/// The first whitespace-separated field (double quotes group), and the
/// rest with its leading whitespace removed.
fn next_field(text: &str) -> Result<(&str, &str), String> {
    let mut quoted = false;
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                return Ok((&text[..i], text[i..].trim_start()));
            }
            _ => {}
        }
    }
    Err(if quoted {
        "a quote is not closed".into()
    } else {
        "no public key".into()
    })
}

fn starts_with_key_type(text: &str) -> bool {
    let first = text.split_whitespace().next().unwrap_or_default();
    ["ssh-", "ecdsa-", "sk-"]
        .iter()
        .any(|prefix| first.starts_with(prefix))
}

/// Splits `a,b="x,y",c` at the commas outside quotes.
fn split_options(text: &str) -> Result<Vec<String>, String> {
    let mut options = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ',' if !quoted => options.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    if quoted {
        return Err("a quote is not closed in the options".into());
    }
    options.push(current);
    Ok(options)
}

fn unquote(value: &str) -> Result<String, String> {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .map(str::to_string)
        .ok_or_else(|| format!("option value {value:?} is not in double quotes"))
}

/// `YYYYMMDD[HHMM[SS]]Z`, UTC, as seconds since the epoch. ssh-keygen reads
/// the same forms without `Z` in the local time zone; coresnap refuses
/// those rather than guess the zone the file was written for.
fn parse_time(text: &str) -> Result<i64, String> {
    let Some(digits) = text.strip_suffix('Z').or_else(|| text.strip_suffix('z')) else {
        return Err(format!(
            "time {text:?} is in local time, which coresnap does not interpret; write it in UTC with a Z suffix ({text}Z)"
        ));
    };
    let bad = || format!("time {text:?} is not YYYYMMDD[HHMM[SS]]Z");
    if !matches!(digits.len(), 8 | 12 | 14) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let field = |range: std::ops::Range<usize>| -> i64 {
        digits.get(range).and_then(|d| d.parse().ok()).unwrap_or(0)
    };
    let (year, month, day) = (field(0..4), field(4..6), field(6..8));
    let (hour, minute, second) = (field(8..10), field(10..12), field(12..14));
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad());
    }
    Ok(days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm, the inverse of `build::civil_from_days`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146097 + day_of_era - 719468
}

/// OpenSSH's pattern lists: comma-separated patterns with `*` and `?`; a
/// match of a `!pattern` refuses outright. `Some(true)`: a positive match
/// and no negative one; `Some(false)`: refused; `None`: nothing matched.
fn matches_pattern_list(name: &str, list: &str) -> Option<bool> {
    let mut result = None;
    for pattern in list.split(',').map(str::trim) {
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pattern),
        };
        if wildcard_match(name.as_bytes(), pattern.as_bytes()) {
            if negated {
                return Some(false);
            }
            result = Some(true);
        }
    }
    result
}

/// `*` (any run) and `?` (any one byte). On a mismatch only the last `*`
/// is retried one byte further, so the cost stays O(name × pattern) however
/// many stars a pattern has.
fn wildcard_match(name: &[u8], pattern: &[u8]) -> bool {
    let (mut n, mut p) = (0, 0);
    let mut last_star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                last_star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                n += 1;
                p += 1;
            }
            _ => match last_star {
                Some((star, matched)) => {
                    last_star = Some((star, matched + 1));
                    p = star + 1;
                    n = matched + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_lists_follow_openssh() {
        assert_eq!(
            matches_pattern_list("ops@example.org", "*@example.org"),
            Some(true)
        );
        assert_eq!(
            matches_pattern_list("ops@example.org", "dev@*,ops@*"),
            Some(true)
        );
        assert_eq!(
            matches_pattern_list("ops@example.org", "*,!ops@*"),
            Some(false)
        );
        assert_eq!(matches_pattern_list("ops", "op?"), Some(true));
        assert_eq!(matches_pattern_list("ops", "op"), None);
        assert_eq!(matches_pattern_list("ops", "OPS"), None);
        assert_eq!(matches_pattern_list("", "*"), Some(true));
        assert_eq!(matches_pattern_list("abcbd", "a*b?"), Some(true));
        assert_eq!(matches_pattern_list("abcbde", "a*b?"), None);
        assert_eq!(
            matches_pattern_list("ops@a.example.org", "*@*.example.org"),
            Some(true)
        );
        let long = "a".repeat(4096);
        assert_eq!(matches_pattern_list(&long, &"*a".repeat(64)), Some(true));
        assert_eq!(
            matches_pattern_list(&long, &format!("{}b", "*a".repeat(64))),
            None
        );
    }

    #[test]
    fn utc_times_and_refused_local_ones() {
        assert_eq!(parse_time("19700101Z"), Ok(0));
        // 2024-02-29 12:34:56 UTC, from `date -u -d ... +%s`.
        assert_eq!(parse_time("20240229123456Z"), Ok(1_709_210_096));
        assert_eq!(parse_time("202402291234Z"), Ok(1_709_210_040));
        assert!(parse_time("20240229").unwrap_err().contains("local time"));
        assert!(parse_time("2024022Z").is_err());
        assert!(parse_time("20241301Z").is_err());
    }

    #[test]
    fn allowed_signers_lines_parse_or_name_their_problem() {
        // Any 32 bytes make an ed25519 public key (here 0, 1, ... 31).
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f";
        let text = format!(
            "# team\n\nops@example.org {key} laptop\n\"a b\",c namespaces=\"coresnap-manifest@coresnap,file\",valid-before=\"20300101Z\" {key}\n"
        );
        let signers = AllowedSigners::parse(&text).unwrap();
        assert_eq!(signers.entries.len(), 2);
        assert_eq!(signers.entries[0].line, 3);
        assert_eq!(signers.entries[1].principals, "a b,c");
        assert_eq!(
            signers.entries[1].namespaces.as_deref(),
            Some("coresnap-manifest@coresnap,file")
        );
        assert_eq!(signers.entries[1].valid_before, Some(1_893_456_000));
        let (line, problem) =
            AllowedSigners::parse(&format!("x {key}\ny restrict {key}\n")).unwrap_err();
        assert_eq!(line, 2);
        assert!(problem.contains("unknown option"), "{problem}");
        let (_, problem) = AllowedSigners::parse("x ssh-ed25519 AAAA\n").unwrap_err();
        assert!(problem.contains("public key"), "{problem}");
    }
}
