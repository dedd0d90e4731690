//! An ext4 disk for the Linux restore tests: made on the host (`mkfs.ext4`), written and read
//! back by the restored guest's shell, then checked on the host (`e2fsck -fn`, `debugfs`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A 32 MiB ext4 image at `img`.
pub fn make(img: &Path) -> Result<(), String> {
    let f = std::fs::File::create(img).map_err(|e| e.to_string())?;
    f.set_len(32 << 20).map_err(|e| e.to_string())?;
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "kite"])
        .arg(img)
        .output()
        .map_err(|e| format!("mkfs.ext4: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mkfs.ext4 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// The shell line that mounts `/dev/vda`, writes `/hello`, syncs, remounts it read-only and
/// reads it back: the console then has `read-back-kite-ext4-42`, and `ext4-done-42` at the end
/// (or `mount:` on a failure).
pub const GUEST_LINE: &str = "mkdir -p /mnt/d && mount -t ext4 /dev/vda /mnt/d && echo kite-ext4-$((6 * 7)) > /mnt/d/hello && sync && umount /mnt/d && mount -t ext4 -o ro /dev/vda /mnt/d && echo read-back-$(cat /mnt/d/hello) && umount /mnt/d && echo ext4-done-$((6 * 7))";

/// Whether the guest's console shows [`GUEST_LINE`] finished (well or not).
fn guest_done(out: &str) -> bool {
    out.contains("ext4-done-42") || out.contains("mount:")
}

/// Whether the guest read back what it wrote.
fn guest_read_back(out: &str) -> bool {
    out.contains("read-back-kite-ext4-42")
}

/// Has the shell of `g` run [`GUEST_LINE`] (waiting up to `limit`) and fails the test unless
/// the guest read back what it wrote.
pub fn write_and_read_back(g: &mut super::Guest, limit: Duration) {
    g.type_line(GUEST_LINE);
    let done = g.wait_for(limit, guest_done);
    assert!(
        done && guest_read_back(&g.out()),
        "the ext4 write and read back in the restored guest failed\n{}\n{}",
        g.out(),
        g.err()
    );
}

/// After the guest powered off: the image is clean and has the file the guest wrote.
pub fn check_on_host(img: &Path) {
    let fsck = Command::new("e2fsck").arg("-fn").arg(img).output().unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck -fn: the image is not clean\n{}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let cat = Command::new("debugfs")
        .args(["-R", "cat /hello"])
        .arg(img)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&cat.stdout),
        "kite-ext4-42\n",
        "the file the guest wrote, read on the host: {}",
        String::from_utf8_lossy(&cat.stderr)
    );
}
