//! The file system itself: fsynced data survives a power cut, unsynced
//! writes and size changes do not, namespace changes do. Needs FUSE (root
//! and /dev/fuse); skipped with a loud warning where it is not usable,
//! except under `CI=true`, where it must run.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use gridsync_lazyfs::Mount;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gridsync-lazyfs"))
}

fn read(path: &std::path::Path) -> Vec<u8> {
    let mut v = Vec::new();
    std::fs::File::open(path)
        .unwrap()
        .read_to_end(&mut v)
        .unwrap();
    v
}

#[test]
fn a_power_cut_forgets_exactly_what_was_not_fsynced() {
    let dir = tempfile::tempdir().unwrap();
    let mut mount = match Mount::start(&bin(), &dir.path().join("mnt")) {
        Ok(m) => m,
        Err(e) if !gridsync_lazyfs::required() => {
            eprintln!(
                "\n!!! SKIPPED: FUSE is not usable here ({e}); this test runs under CI=true\n"
            );
            return;
        }
        Err(e) => panic!("FUSE must be usable under CI=true: {e}"),
    };
    let root = mount.path().to_owned();
    std::fs::create_dir(root.join("d")).unwrap();
    let synced = root.join("d/synced");
    let mut f = std::fs::File::create(&synced).unwrap();
    f.write_all(b"hello world").unwrap();
    f.sync_all().unwrap();
    // Written after the fsync, then a partial overwrite and an extension.
    f.seek(SeekFrom::Start(6)).unwrap();
    f.write_all(b"WORLD and more").unwrap();
    drop(f);
    let unsynced = root.join("d/unsynced");
    std::fs::write(&unsynced, b"never fsynced").unwrap();
    let mut data = std::fs::OpenOptions::new()
        .write(true)
        .open(&synced)
        .unwrap();
    data.flush().unwrap();
    drop(data);
    assert_eq!(read(&synced), b"hello WORLD and more");

    let report = mount.cut();
    assert_eq!(report.files, 2, "{report:?}");
    // While the power is off nothing is written.
    assert!(std::fs::write(root.join("d/late"), b"x").is_err());
    mount.power_on();
    assert!(report.bytes >= 13 + 14, "{report:?}");
    assert_eq!(read(&synced), b"hello world", "back to the fsynced bytes");
    assert_eq!(read(&unsynced), b"", "the name survives, the data does not");

    // fdatasync counts as well, and a truncation becomes durable with it.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&synced)
        .unwrap();
    f.set_len(5).unwrap();
    f.sync_data().unwrap();
    drop(f);
    std::fs::rename(&synced, root.join("d/renamed")).unwrap();
    let report = mount.cut();
    assert_eq!(report.files, 0, "{report:?}");
    mount.power_on();
    assert_eq!(read(&root.join("d/renamed")), b"hello");
    assert!(!synced.exists());
}
