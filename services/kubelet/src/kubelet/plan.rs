//! Pure decisions: quantities, the command a container runs, `$(VAR)` expansion, users,
//! restart back-off, restart decisions and the pod's phase.

use std::collections::HashMap;
use std::time::Duration;

use crate::image::ImageConfig;

/// A memory quantity (`64Mi`, `1G`, `1e6`, `500m`) in bytes, rounded up. Pure.
pub fn parse_bytes(q: &str) -> Option<i64> {
    let q = q.trim();
    let split = q.find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E').unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        "Pi" => 1024.0f64.powi(5),
        _ => return None,
    };
    let v = (n * mult).ceil();
    (v.is_finite() && v >= 0.0).then_some(v as i64)
}

/// A CPU quantity (`500m`, `2`, `0.5`) in millicores, rounded up. Pure.
pub fn parse_millicores(q: &str) -> Option<i64> {
    let q = q.trim();
    let v = match q.strip_suffix('m') {
        Some(m) => m.parse::<f64>().ok()?,
        None => q.parse::<f64>().ok()? * 1000.0,
    };
    let v = v.ceil();
    (v.is_finite() && v >= 0.0).then_some(v as i64)
}

/// Expand `$(VAR)` references from `env` (`$$` escapes, unknown references stay). Pure.
pub fn expand(s: &str, env: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'(' {
                if let Some(end) = s[i + 2..].find(')') {
                    let name = &s[i + 2..i + 2 + end];
                    if let Some(v) = env.get(name) {
                        out.push_str(v);
                        i += 3 + end;
                        continue;
                    }
                }
            }
        }
        let ch = s[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// The argv a container runs: Kubernetes' rules for command/args over the image's
/// Entrypoint/Cmd. Pure.
pub fn argv(command: &[String], args: &[String], image: &ImageConfig, env: &HashMap<String, String>) -> Vec<String> {
    let x = |v: &[String]| v.iter().map(|s| expand(s, env)).collect::<Vec<_>>();
    match (command.is_empty(), args.is_empty()) {
        (false, _) => [x(command), x(args)].concat(),
        (true, false) => [image.entrypoint.clone(), x(args)].concat(),
        (true, true) => [image.entrypoint.clone(), image.cmd.clone()].concat(),
    }
}

/// Merge the image's environment with the container's (`NAME=value`, container wins,
/// order kept). Pure.
pub fn merge_env(image: &[String], container: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = image.iter().filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))).collect();
    for (k, v) in container {
        match out.iter_mut().find(|(ek, _)| ek == k) {
            Some(e) => e.1 = v.clone(),
            None => out.push((k.clone(), v.clone())),
        }
    }
    if !out.iter().any(|(k, _)| k == "PATH") {
        out.insert(0, ("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()));
    }
    out
}

/// The user (`uid[:gid]` or names) from an image config, resolved with `/etc/passwd` and
/// `/etc/group` texts. Pure.
pub fn resolve_user(user: &str, passwd: &str, group: &str) -> Option<(u32, u32)> {
    if user.is_empty() {
        return Some((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let entry = |text: &str, name: &str| -> Option<Vec<String>> { text.lines().map(|l| l.split(':').map(str::to_string).collect::<Vec<_>>()).find(|f| f.first().map(String::as_str) == Some(name)) };
    let (uid, primary) = match u.parse::<u32>() {
        Ok(n) => (n, passwd.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| f.get(2) == Some(&u)).and_then(|f| f.get(3)?.parse().ok()).unwrap_or(n)),
        Err(_) => {
            let f = entry(passwd, u)?;
            (f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)
        }
    };
    let gid = match g {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => entry(group, g)?.get(2)?.parse().ok()?,
        },
    };
    Some((uid, gid))
}

/// CrashLoopBackOff: the first restart is immediate, then `base` doubling up to `max`.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// How long to wait before restart number `crashes` (1 = the first restart). Pure.
    pub fn delay(&self, crashes: u32) -> Duration {
        if crashes <= 1 {
            return Duration::ZERO;
        }
        let shift = (crashes - 2).min(20);
        self.base.saturating_mul(1u32 << shift).min(self.max)
    }
}

/// Whether a container that exited with `code` is restarted under `policy`. Pure.
pub fn restarts(policy: &str, code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => code != 0,
        _ => true,
    }
}

/// One container as the phase computation sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    Waiting,
    Running,
    /// Exited with this code; `true` if it will be restarted.
    Exited(i32, bool),
}

/// The pod phase from its init and app containers. Pure.
pub fn phase(inits: &[Seen], apps: &[Seen]) -> &'static str {
    for s in inits {
        match s {
            Seen::Exited(0, _) => continue,
            Seen::Exited(_, false) => return "Failed",
            _ => return "Pending",
        }
    }
    if apps.iter().any(|s| matches!(s, Seen::Running)) {
        return "Running";
    }
    if !apps.is_empty() && apps.iter().all(|s| matches!(s, Seen::Exited(_, false))) {
        return if apps.iter().all(|s| matches!(s, Seen::Exited(0, _))) { "Succeeded" } else { "Failed" };
    }
    if apps.iter().any(|s| matches!(s, Seen::Exited(_, true))) {
        // Restarting (CrashLoopBackOff) after having run: Kubernetes keeps it Running.
        return "Running";
    }
    "Pending"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_bytes("64Mi"), Some(64 << 20));
        assert_eq!(parse_bytes("1G"), Some(1_000_000_000));
        assert_eq!(parse_bytes("128974848"), Some(128_974_848));
        assert_eq!(parse_bytes("1e3"), Some(1000));
        assert_eq!(parse_bytes("1.5Ki"), Some(1536));
        assert_eq!(parse_bytes("12Zi"), None);
        assert_eq!(parse_millicores("500m"), Some(500));
        assert_eq!(parse_millicores("2"), Some(2000));
        assert_eq!(parse_millicores("0.25"), Some(250));
        assert_eq!(parse_millicores("x"), None);
    }

    #[test]
    fn expansion() {
        let env: HashMap<String, String> = [("A".to_string(), "1".to_string()), ("B".to_string(), "x y".to_string())].into();
        assert_eq!(expand("$(A)-$(B)", &env), "1-x y");
        assert_eq!(expand("$$(A) $(C) $(A", &env), "$(A) $(C) $(A");
        assert_eq!(expand("é$(A)", &env), "é1");
    }

    #[test]
    fn command_and_args() {
        let img = ImageConfig { entrypoint: vec!["/ep".into()], cmd: vec!["c1".into()], ..Default::default() };
        let env: HashMap<String, String> = [("X".to_string(), "v".to_string())].into();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(argv(&[], &[], &img, &env), s(&["/ep", "c1"]));
        assert_eq!(argv(&[], &s(&["a", "$(X)"]), &img, &env), s(&["/ep", "a", "v"]));
        assert_eq!(argv(&s(&["sh"]), &[], &img, &env), s(&["sh"]));
        assert_eq!(argv(&s(&["sh"]), &s(&["-c", "x"]), &img, &env), s(&["sh", "-c", "x"]));
    }

    #[test]
    fn environment() {
        let e = merge_env(&["PATH=/bin".into(), "A=1".into()], &[("A".into(), "2".into()), ("B".into(), "3".into())]);
        assert_eq!(e, vec![("PATH".into(), "/bin".into()), ("A".into(), "2".into()), ("B".into(), "3".into())]);
        assert_eq!(merge_env(&[], &[])[0].0, "PATH");
    }

    #[test]
    fn users() {
        let passwd = "root:x:0:0::/root:/bin/sh\nwww:x:33:34::/var/www:/bin/false\n";
        let group = "root:x:0:\nstaff:x:50:\n";
        assert_eq!(resolve_user("", passwd, group), Some((0, 0)));
        assert_eq!(resolve_user("www", passwd, group), Some((33, 34)));
        assert_eq!(resolve_user("33", passwd, group), Some((33, 34)));
        assert_eq!(resolve_user("1000:1000", passwd, group), Some((1000, 1000)));
        assert_eq!(resolve_user("www:staff", passwd, group), Some((33, 50)));
        assert_eq!(resolve_user("nobody", passwd, group), None);
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let b = Backoff { base: Duration::from_secs(10), max: Duration::from_secs(300) };
        let d: Vec<u64> = (1..=8).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(d, vec![0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.delay(1000).as_secs(), 300);
    }

    #[test]
    fn restart_policies() {
        assert!(restarts("Always", 0) && restarts("Always", 1) && restarts("", 0));
        assert!(!restarts("OnFailure", 0) && restarts("OnFailure", 2));
        assert!(!restarts("Never", 1));
    }

    #[test]
    fn phases() {
        use Seen::*;
        assert_eq!(phase(&[Waiting], &[Waiting]), "Pending");
        assert_eq!(phase(&[Running], &[Waiting]), "Pending");
        assert_eq!(phase(&[Exited(1, false)], &[Waiting]), "Failed");
        assert_eq!(phase(&[Exited(0, false)], &[Running]), "Running");
        assert_eq!(phase(&[], &[Exited(0, false), Exited(0, false)]), "Succeeded");
        assert_eq!(phase(&[], &[Exited(0, false), Exited(3, false)]), "Failed");
        assert_eq!(phase(&[], &[Exited(3, true)]), "Running");
        assert_eq!(phase(&[], &[Running, Exited(0, false)]), "Running");
        assert_eq!(phase(&[], &[]), "Pending");
    }
}
