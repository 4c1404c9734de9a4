//! Interoperability with the real `age` CLI (Debian package `age`, installed by
//! tests/install-deps.sh): what it encrypts we decrypt, what we encrypt it decrypts, its
//! key files parse; and damaged files give typed errors.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use kapp_age::{decrypt, encrypt, encrypt_armored, parse_identities, Error, Identity, Recipient};

fn run(cmd: &mut Command, stdin: &[u8]) -> Vec<u8> {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e} (is the age package installed? tests/install-deps.sh)"));
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || input.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// A key from `age-keygen`: (its key file text, its recipient).
fn keygen(dir: &Path, name: &str) -> (String, String) {
    let path = dir.join(name);
    run(Command::new("age-keygen").arg("-o").arg(&path), b"");
    let text = std::fs::read_to_string(&path).unwrap();
    let public = String::from_utf8(run(Command::new("age-keygen").arg("-y").arg(&path), b"")).unwrap();
    (text, public.trim().to_string())
}

/// Sizes around the 64 KiB chunk boundaries.
fn payloads() -> Vec<Vec<u8>> {
    [0usize, 1, 100, 65_535, 65_536, 65_537, 2 * 65_536, 2 * 65_536 + 7].iter().map(|&n| (0..n).map(|i| (i * 31 % 251) as u8).collect()).collect()
}

#[test]
fn age_keygen_keys_parse_with_comments_and_give_the_same_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let (text, public) = keygen(dir.path(), "key.txt");
    assert!(text.starts_with("# created: "), "{text}");
    let ids = parse_identities(&text).unwrap();
    assert_eq!(ids.len(), 1);
    assert_eq!(ids[0].to_recipient().to_string(), public);
    assert_eq!(public.parse::<Recipient>().unwrap(), ids[0].to_recipient());
    let line = text.lines().find(|l| l.starts_with("AGE-SECRET-KEY-1")).unwrap();
    assert_eq!(ids[0].to_secret_string(), line);
    // Our keys, given to age-keygen -y, give our recipient.
    let ours = Identity::generate();
    let path = dir.path().join("ours.txt");
    std::fs::write(&path, format!("# a comment\n\n{}\n", ours.to_secret_string())).unwrap();
    let theirs = String::from_utf8(run(Command::new("age-keygen").arg("-y").arg(&path), b"")).unwrap();
    assert_eq!(theirs.trim(), ours.to_recipient().to_string());
}

#[test]
fn files_encrypted_by_age_decrypt_binary_and_armored() {
    let dir = tempfile::tempdir().unwrap();
    let (text, public) = keygen(dir.path(), "key.txt");
    let (_, other) = keygen(dir.path(), "other.txt");
    let ids = parse_identities(&text).unwrap();
    for p in payloads() {
        let bin = run(Command::new("age").args(["-r", &public]), &p);
        assert_eq!(decrypt(&ids, &bin).unwrap(), p, "binary, {} bytes", p.len());
        // Two recipients, ours second; armored.
        let armored = run(Command::new("age").args(["-a", "-r", &other, "-r", &public]), &p);
        assert!(armored.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----\n"));
        assert_eq!(decrypt(&ids, &armored).unwrap(), p, "armored, {} bytes", p.len());
    }
}

#[test]
fn files_we_encrypt_decrypt_with_age() {
    let dir = tempfile::tempdir().unwrap();
    let (text, public) = keygen(dir.path(), "key.txt");
    let key = dir.path().join("key.txt");
    let recipient: Recipient = public.parse().unwrap();
    let ours = Identity::generate();
    let ours_file = dir.path().join("ours.txt");
    std::fs::write(&ours_file, ours.to_secret_string()).unwrap();
    for p in payloads() {
        let bin = encrypt(&[recipient], &p).unwrap();
        assert_eq!(run(Command::new("age").arg("-d").arg("-i").arg(&key), &bin), p, "binary, {} bytes", p.len());
        let armored = encrypt_armored(&[ours.to_recipient(), recipient], &p).unwrap();
        assert_eq!(run(Command::new("age").arg("-d").arg("-i").arg(&ours_file), armored.as_bytes()), p, "armored, {} bytes", p.len());
        // And our own decryption of both.
        assert_eq!(decrypt(&parse_identities(&text).unwrap(), &bin).unwrap(), p);
        assert_eq!(decrypt(&[ours.clone()], armored.as_bytes()).unwrap(), p);
    }
}

#[test]
fn wrong_key_tampering_and_truncation_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (text, public) = keygen(dir.path(), "key.txt");
    let ids = parse_identities(&text).unwrap();
    let plain: Vec<u8> = (0..3 * 65_536 + 10).map(|i| i as u8).collect();
    let file = run(Command::new("age").args(["-r", &public]), &plain);
    let stranger = Identity::generate();
    assert_eq!(decrypt(&[stranger], &file), Err(Error::NoMatch));

    // The header: the MAC covers it (the recipient stanza still unwraps).
    let mut h = file.clone();
    let at = h.windows(4).position(|w| w == b"\n---").unwrap();
    h.splice(at + 1..at + 1, b"-> grease x\n\n".iter().copied());
    assert_eq!(decrypt(&ids, &h), Err(Error::HeaderMac));
    // The MAC itself.
    let mut h = file.clone();
    let mac_at = at + 5;
    h[mac_at] = if h[mac_at] == b'A' { b'B' } else { b'A' };
    assert!(matches!(decrypt(&ids, &h), Err(Error::HeaderMac | Error::Header(_))), "{:?}", decrypt(&ids, &h));

    // The body: one bit in the second chunk.
    let payload_at = file.iter().skip(at + 1).position(|&b| b == b'\n').unwrap() + at + 2;
    let mut b = file.clone();
    b[payload_at + 16 + 65_536 + 16 + 5] ^= 1;
    assert_eq!(decrypt(&ids, &b), Err(Error::Payload { chunk: 1 }));

    // Truncation: at a chunk boundary, inside a chunk, inside the header, the nonce gone.
    let boundary = payload_at + 16 + 2 * (65_536 + 16);
    assert_eq!(decrypt(&ids, &file[..boundary]), Err(Error::Truncated));
    assert_eq!(decrypt(&ids, &file[..boundary - 100]), Err(Error::Payload { chunk: 1 }));
    assert_eq!(decrypt(&ids, &file[..payload_at + 16]), Err(Error::Truncated));
    assert_eq!(decrypt(&ids, &file[..payload_at + 3]), Err(Error::Truncated));
    assert_eq!(decrypt(&ids, &file[..at]), Err(Error::Truncated));
    // Armored and cut before its END line.
    let armored = run(Command::new("age").args(["-a", "-r", &public]), b"hello");
    let cut = &armored[..armored.len() - 40];
    assert_eq!(decrypt(&ids, cut), Err(Error::Truncated));
    assert_eq!(decrypt(&ids, b"not age"), Err(Error::NotAgeFile));
}

#[test]
fn bad_keys_are_refused_without_echoing_them() {
    let id = Identity::generate();
    let secret = id.to_secret_string();
    assert!(secret.starts_with("AGE-SECRET-KEY-1") && secret.len() == 74, "{}", secret.len());
    let mut bad = secret.clone();
    bad.replace_range(20..21, if &secret[20..21] == "Q" { "P" } else { "Q" });
    let e = bad.parse::<Identity>().unwrap_err();
    assert_eq!(e, Error::InvalidIdentity("invalid checksum"));
    assert!(!e.to_string().contains(&secret[16..]));
    let e = parse_identities(&format!("# key\n{bad}\n")).unwrap_err();
    assert_eq!(e, Error::InvalidKeyFileLine { line: 2, reason: "invalid checksum" });
    assert!(!format!("{e} {e:?}").contains(&secret[16..]));
    assert!(!format!("{id:?}").contains(&secret[16..]));
    assert_eq!(secret.to_lowercase().parse::<Identity>().unwrap_err(), Error::InvalidIdentity("secret keys are upper case"));
    assert_eq!(parse_identities("# nothing\n\n").unwrap_err(), Error::NoIdentity);
    let r = id.to_recipient().to_string();
    assert!(r.starts_with("age1") && r.len() == 62);
    assert_eq!(secret.parse::<Recipient>().unwrap_err(), Error::InvalidRecipient("recipients are lower case"));
    assert_eq!(r.parse::<Identity>().unwrap_err(), Error::InvalidIdentity("secret keys are upper case"));
}
