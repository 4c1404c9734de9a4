//! The power button: `KEY_POWER` presses on any `/dev/input/event*` device (ACPI's "Power
//! Button" once the `button` and `evdev` modules are loaded; QEMU's `system_powerdown`).
//! Devices are looked for every 2 s, since they appear as their drivers probe.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;
/// `struct input_event` on 64-bit Linux: a 16-byte timeval, type, code, value.
const EVENT_SIZE: usize = 24;

/// Whether one `input_event` is a power key press. Pure.
pub fn is_power_press(event: &[u8]) -> bool {
    event.len() == EVENT_SIZE
        && u16::from_ne_bytes([event[16], event[17]]) == EV_KEY
        && u16::from_ne_bytes([event[18], event[19]]) == KEY_POWER
        && i32::from_ne_bytes([event[20], event[21], event[22], event[23]]) == 1
}

/// Watch `<dev>/input/event*`; a press sends on the channel (capacity 1: one is enough).
pub fn watch(dev: &Path) -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    let dir = dev.join("input");
    let spawned = std::thread::Builder::new().name("kapp-init-power".into()).spawn(move || {
        let mut watching: HashSet<PathBuf> = HashSet::new();
        while !tx.is_closed() {
            let devices = std::fs::read_dir(&dir).map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("event"))).collect::<Vec<_>>()).unwrap_or_default();
            for path in devices {
                if watching.insert(path.clone()) {
                    let tx = tx.clone();
                    let _ = std::thread::Builder::new().name("kapp-init-input".into()).spawn(move || read_device(&path, &tx));
                }
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no power button watcher");
    }
    rx
}

fn read_device(path: &Path, tx: &mpsc::Sender<()>) {
    let Ok(mut f) = std::fs::File::open(path) else { return };
    let mut event = [0u8; EVENT_SIZE];
    while f.read_exact(&mut event).is_ok() {
        if is_power_press(&event) && tx.try_send(()).is_err() && tx.is_closed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u16, code: u16, value: i32) -> [u8; EVENT_SIZE] {
        let mut e = [0u8; EVENT_SIZE];
        e[16..18].copy_from_slice(&kind.to_ne_bytes());
        e[18..20].copy_from_slice(&code.to_ne_bytes());
        e[20..24].copy_from_slice(&value.to_ne_bytes());
        e
    }

    #[tokio::test]
    async fn a_power_key_press_on_an_input_device_is_reported() {
        assert!(is_power_press(&event(EV_KEY, KEY_POWER, 1)));
        assert!(!is_power_press(&event(EV_KEY, KEY_POWER, 0)), "release");
        assert!(!is_power_press(&event(EV_KEY, 30, 1)), "another key");
        assert!(!is_power_press(&event(0, 0, 0)), "a sync event");
        // A fake device: a FIFO written like an evdev node.
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("input")).unwrap();
        let fifo = d.path().join("input/event0");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut presses = watch(d.path());
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            f.write_all(&event(EV_KEY, 30, 1)).unwrap();
            f.write_all(&event(EV_KEY, KEY_POWER, 1)).unwrap();
        });
        tokio::time::timeout(Duration::from_secs(10), presses.recv()).await.expect("a press within 10 s").unwrap();
        writer.join().unwrap();
    }
}
