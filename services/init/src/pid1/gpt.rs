//! Growing the state partition to the end of its disk (the image is small; the disk it is
//! written to is not). Only the last partition can grow, and only into free space: the GPT
//! is rewritten (backup header and entries moved to the disk's new end first, then the
//! primary ones, each with its CRC), and the kernel is told the new size with
//! `BLKPG_RESIZE_PARTITION` while the disk's other partitions stay in use.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

const SIGNATURE: &[u8; 8] = b"EFI PART";
/// Partition ends are aligned to this many bytes.
const ALIGN: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no GPT on the disk")]
    NoGpt,
    #[error("the GPT header's CRC does not match: not touching it")]
    BadCrc,
    #[error("no partition named {0}")]
    NoPartition(String),
    #[error("partition {0} is not the last one on the disk: it cannot grow")]
    NotLast(String),
    #[error("tell the kernel about partition {partition}'s new size: {source}")]
    Kernel { partition: u32, source: nix::Error },
}

/// What [`grow_table`] did: the partition's number and its size before and after (bytes).
#[derive(Debug, PartialEq, Eq)]
pub struct Grown {
    pub number: u32,
    pub start: u64,
    pub old_size: u64,
    pub new_size: u64,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// The header's CRC32 over its `size` bytes with the CRC field zeroed.
fn header_crc(h: &[u8]) -> u32 {
    let size = (u32_at(h, 12) as usize).clamp(92, h.len());
    let mut copy = h[..size].to_vec();
    put_u32(&mut copy, 16, 0);
    crc32fast::hash(&copy)
}

fn name_of(entry: &[u8]) -> String {
    let units: Vec<u16> = entry[56..128].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|&u| u != 0).collect();
    String::from_utf16_lossy(&units)
}

fn read_at(f: &mut File, at: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    f.seek(SeekFrom::Start(at))?;
    f.read_exact(&mut buf)?;
    Ok(buf)
}

fn write_at(f: &mut File, at: u64, data: &[u8]) -> std::io::Result<()> {
    f.seek(SeekFrom::Start(at))?;
    f.write_all(data)
}

/// Grow the partition named `label` on the disk (or disk image) `disk` of `disk_bytes`
/// bytes with `lbs`-byte blocks to the disk's end. `Ok(None)`: it already reaches it (or
/// less than [`ALIGN`] is free).
pub fn grow_table(disk: &Path, disk_bytes: u64, lbs: u64, label: &str) -> Result<Option<Grown>, GptError> {
    let mut f = File::options().read(true).write(true).open(disk)?;
    let header = read_at(&mut f, lbs, lbs as usize)?;
    if &header[..8] != SIGNATURE {
        return Err(GptError::NoGpt);
    }
    if header_crc(&header) != u32_at(&header, 16) {
        return Err(GptError::BadCrc);
    }
    let (entries_lba, count, size) = (u64_at(&header, 72), u32_at(&header, 80) as usize, u32_at(&header, 84) as usize);
    if size < 128 || count == 0 || count > 1024 {
        return Err(GptError::NoGpt);
    }
    let mut entries = read_at(&mut f, entries_lba * lbs, count * size)?;
    if crc32fast::hash(&entries) != u32_at(&header, 88) {
        return Err(GptError::BadCrc);
    }
    let used = |i: usize| entries[i * size..i * size + 16].iter().any(|&b| b != 0);
    let index = (0..count).find(|&i| used(i) && name_of(&entries[i * size..(i + 1) * size]) == label).ok_or_else(|| GptError::NoPartition(label.into()))?;
    let (first, last) = (u64_at(&entries, index * size + 32), u64_at(&entries, index * size + 40));
    if (0..count).any(|i| i != index && used(i) && u64_at(&entries, i * size + 40) > last) {
        return Err(GptError::NotLast(label.into()));
    }
    let total = disk_bytes / lbs;
    let entry_blocks = (count * size) as u64 / lbs + u64::from((count * size) as u64 % lbs != 0);
    let backup_entries = total - 1 - entry_blocks;
    let last_usable = backup_entries - 1;
    // The new end: aligned, inside the usable area.
    let per_align = (ALIGN / lbs).max(1);
    let new_last = (last_usable + 1) / per_align * per_align - 1;
    if new_last <= last || total <= u64_at(&header, 32) {
        return Ok(None);
    }
    put_u64(&mut entries, index * size + 40, new_last);
    let entries_crc = crc32fast::hash(&entries);
    let mut primary = header.clone();
    put_u64(&mut primary, 32, total - 1);
    put_u64(&mut primary, 48, last_usable);
    put_u32(&mut primary, 88, entries_crc);
    let crc = header_crc(&primary);
    put_u32(&mut primary, 16, crc);
    let mut backup = primary.clone();
    put_u64(&mut backup, 24, total - 1);
    put_u64(&mut backup, 32, 1);
    put_u64(&mut backup, 72, backup_entries);
    let crc = header_crc(&backup);
    put_u32(&mut backup, 16, crc);
    // Backup first: until the primary is written the old table stays valid and whole.
    write_at(&mut f, backup_entries * lbs, &entries)?;
    write_at(&mut f, (total - 1) * lbs, &backup)?;
    f.sync_data()?;
    write_at(&mut f, entries_lba * lbs, &entries)?;
    write_at(&mut f, lbs, &primary)?;
    // The protective MBR's partition covers the whole disk (up to what 32 bits hold).
    let mut mbr = read_at(&mut f, 0, 512)?;
    if mbr[510..512] == [0x55, 0xAA] && mbr[446 + 4] == 0xEE {
        put_u32(&mut mbr, 446 + 12, (total - 1).min(u64::from(u32::MAX)) as u32);
        write_at(&mut f, 0, &mbr)?;
    }
    f.sync_all()?;
    Ok(Some(Grown { number: index as u32 + 1, start: first * lbs, old_size: (last - first + 1) * lbs, new_size: (new_last - first + 1) * lbs }))
}

/// `struct blkpg_partition` of <linux/blkpg.h>.
#[repr(C)]
pub struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: i32,
    devname: [u8; 64],
    volname: [u8; 64],
}

/// `struct blkpg_ioctl_arg` of <linux/blkpg.h>.
#[repr(C)]
pub struct BlkpgIoctlArg {
    op: i32,
    flags: i32,
    datalen: i32,
    data: *mut BlkpgPartition,
}

const BLKPG_RESIZE_PARTITION: i32 = 3;

#[allow(unsafe_code)]
mod ioctl {
    // BLKPG = _IO(0x12, 105): the argument is a pointer although the number says none.
    nix::ioctl_write_ptr_bad!(blkpg, 0x1269, super::BlkpgIoctlArg);
}

/// Tell the kernel that partition `number` of the open disk `disk` now spans
/// `start..start + length` bytes (the rest of the disk stays in use meanwhile).
#[allow(unsafe_code)]
pub fn resize_in_kernel(disk: &File, g: &Grown) -> Result<(), GptError> {
    use std::os::fd::AsRawFd;
    let mut part = BlkpgPartition { start: g.start as i64, length: g.new_size as i64, pno: g.number as i32, devname: [0; 64], volname: [0; 64] };
    let arg = BlkpgIoctlArg { op: BLKPG_RESIZE_PARTITION, flags: 0, datalen: std::mem::size_of::<BlkpgPartition>() as i32, data: &mut part };
    // SAFETY: `arg` and the `part` it points to live across the call, laid out as the
    // kernel's structs; the kernel only reads them.
    unsafe { ioctl::blkpg(disk.as_raw_fd(), &arg) }.map_err(|source| GptError::Kernel { partition: g.number, source })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sfdisk(img: &Path, args: &[&str], input: Option<&str>) -> Option<String> {
        let mut c = Command::new("sfdisk");
        c.args(args).arg(img).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let mut child = c.spawn().ok()?;
        if let Some(i) = input {
            child.stdin.take()?.write_all(i.as_bytes()).ok()?;
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().ok()?;
        assert!(out.status.success(), "sfdisk {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    #[test]
    fn the_last_partition_grows_to_the_end_of_a_bigger_disk() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        File::create(&img).unwrap().set_len(64 << 20).unwrap();
        let table = "label: gpt\nsize=8MiB, name=ESP\nsize=16MiB, name=kapp-root-a\nname=kapp-state\n";
        let Some(_) = sfdisk(&img, &[], Some(table)) else { return eprintln!("sfdisk (util-linux) not installed: skipped") };
        // It fills the disk already: nothing to do. Then the disk grows to 256 MiB.
        assert_eq!(grow_table(&img, 64 << 20, 512, "kapp-state").unwrap(), None);
        File::options().write(true).open(&img).unwrap().set_len(256 << 20).unwrap();
        assert!(matches!(grow_table(&img, 256 << 20, 512, "kapp-root-a"), Err(GptError::NotLast(_))));
        assert!(matches!(grow_table(&img, 256 << 20, 512, "nope"), Err(GptError::NoPartition(_))));
        let g = grow_table(&img, 256 << 20, 512, "kapp-state").unwrap().expect("grown");
        assert_eq!((g.number, g.start), (3, 25 << 20));
        assert!(g.old_size >= 38 << 20 && g.old_size < 39 << 20, "{g:?}");
        assert_eq!(g.start + g.new_size, 255 << 20, "up to the last whole MiB before the backup GPT");
        // sfdisk reads the table back as valid, the backup at the disk's end.
        sfdisk(&img, &["--verify"], None).unwrap();
        let dump = sfdisk(&img, &["--dump"], None).unwrap();
        let line = dump.lines().find(|l| l.contains("kapp-state")).unwrap();
        let sectors: u64 = line.split("size=").nth(1).unwrap().split(',').next().unwrap().trim().parse().unwrap();
        assert_eq!(sectors * 512, g.new_size, "{dump}");
        assert!(dump.contains("last-lba: 524254"), "{dump}");
        assert_eq!(grow_table(&img, 256 << 20, 512, "kapp-state").unwrap(), None, "once is enough");
        // A damaged header is left alone.
        let mut f = File::options().read(true).write(true).open(&img).unwrap();
        write_at(&mut f, 512 + 40, &[1]).unwrap();
        assert!(matches!(grow_table(&img, 256 << 20, 512, "kapp-state"), Err(GptError::BadCrc)));
    }
}
