//! The signature check of `coresnap verify --allowed-signers` on arbitrary
//! input: an allowed signers file and a signature, either as the `.sig`
//! file's bytes or as arbitrary SSHSIG bytes wrapped in its armor (so the
//! binary decoder is reached, not only the armor's).
#![no_main]

use coresnap::manifest::sign::{AllowedSigners, check_armored};
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::time::SystemTime;

const MANIFEST: &[u8] = b"{\"schema\":\"coresnap-manifest\"}\n";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let split = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    let (signers_text, signature) = (&rest[..split], rest.get(split + 1..).unwrap_or_default());
    let signers = match AllowedSigners::parse(&String::from_utf8_lossy(signers_text)) {
        Ok(signers) => signers,
        Err((line, _)) => {
            assert!(line >= 1);
            AllowedSigners::parse("").expect("an empty file parses")
        }
    };
    let armored = if mode & 1 == 0 {
        signature.to_vec()
    } else {
        armor(signature)
    };
    let _ = check_armored(
        MANIFEST,
        &armored,
        Path::new("fuzz.sig"),
        &signers,
        "ops@example.org",
        SystemTime::UNIX_EPOCH,
    );
});

/// `-----BEGIN SSH SIGNATURE-----`, the base64 of `bytes` in lines of 70,
/// and the end line.
fn armor(bytes: &[u8]) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut encoded = Vec::new();
    for chunk in bytes.chunks(3) {
        let word = chunk
            .iter()
            .enumerate()
            .fold(0u32, |w, (i, &b)| w | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            encoded.push(if i <= chunk.len() {
                ALPHABET[(word >> (18 - 6 * i) & 63) as usize]
            } else {
                b'='
            });
        }
    }
    let mut out = b"-----BEGIN SSH SIGNATURE-----\n".to_vec();
    for line in encoded.chunks(70) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.extend_from_slice(b"-----END SSH SIGNATURE-----\n");
    out
}
