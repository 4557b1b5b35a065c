//! `bty flash` end to end: the real binary writing real loop devices (root) and files.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util;
use crate::util::*;

const MIB: usize = 1 << 20;

/// Writes every encoding of one image, returns (path, raw sha) pairs including qcow2 variants.
fn all_formats(dir: &TestDir, raw: &[u8]) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for (suffix, enc) in encoders() {
        let p = dir.path(&format!("disk.{suffix}"));
        fs::write(&p, enc(raw)).unwrap();
        out.push(p);
    }
    let rawp = dir.path("disk.img");
    for (name, extra) in [
        ("disk.qcow2", &[][..]),
        ("disk-c.qcow2", &["-c"][..]),
        ("disk-v2.qcow2", &["-o", "compat=0.10"][..]),
    ] {
        let p = dir.path(name);
        qcow2(&rawp, &p, extra);
        out.push(p);
    }
    out
}

#[test]
fn every_format_round_trips_to_a_loop_device() {
    let dir = TestDir::new("roundtrip");
    let raw = disk_image(1, 20 * MIB + 4096);
    let want = sha256(&raw);
    for src in all_formats(&dir, &raw) {
        let l = Loop::new(&dir, "target", 32 * MIB);
        let o = flash(&src, &l.dev, &[]);
        assert!(o.status.success(), "{}: {}", src.display(), stderr(&o));
        assert_eq!(sha256(&l.read(0, raw.len())), want, "{} differs on the target", src.display());
        // Beyond the image the disk keeps what it had, except the last MiB (backup GPT) is blanked.
        assert!(
            is_zero(&l.read(l.size() - MIB as u64, MIB)),
            "{}: last MiB not blanked",
            src.display()
        );
    }
}

#[test]
fn zero_skip_reads_back_zeros_over_random_bytes() {
    let dir = TestDir::new("zeroskip");
    let raw = disk_image(2, 24 * MIB);
    let src = dir.path("disk.img.zst");
    fs::write(&src, zstd(&raw)).unwrap();
    let l = Loop::new(&dir, "target", 24 * MIB);
    let o = bty()
        .args(["flash", "--yes", "--progress", "json"])
        .arg(&src)
        .arg(&l.dev)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let done: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a done line")).expect("json");
    assert_eq!(done["event"], "done");
    let zeroed = done["zeroed_bytes"].as_u64().unwrap();
    assert!(zeroed >= 4 * MIB as u64, "expected zero runs to be skipped, got {zeroed}");
    assert_eq!(sha256(&l.read(0, raw.len())), sha256(&raw));

    // The same with --no-zero-skip writes everything as data.
    let l2 = Loop::new(&dir, "target2", 24 * MIB);
    let o = bty()
        .args(["flash", "--yes", "--no-zero-skip", "--progress", "json"])
        .arg(&src)
        .arg(&l2.dev)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let done: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(done["zeroed_bytes"].as_u64(), Some(0));
    assert_eq!(sha256(&l2.read(0, raw.len())), sha256(&raw));
}

#[test]
fn pinned_digest_mismatch_fails_and_leaves_the_disk_blank() {
    let dir = TestDir::new("digest");
    let raw = disk_image(3, 8 * MIB);
    let src = dir.path("disk.img.gz");
    fs::write(&src, gzip(&raw)).unwrap();
    let l = Loop::new(&dir, "target", 16 * MIB);
    let wrong = "ab".repeat(32);
    let o = flash(&src, &l.dev, &["--sha256", &wrong]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("sha256 mismatch"), "{}", stderr(&o));
    assert_blank(&l);

    // The right digest (of the compressed file, as catalogs pin it) succeeds.
    let right = sha256(&fs::read(&src).unwrap());
    let o = flash(&src, &l.dev, &["--sha256", &right]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sha256(&l.read(0, raw.len())), sha256(&raw));

    let o = flash(&src, &l.dev, &["--sha256", "xyz"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("64 hex digits"), "{}", stderr(&o));
}

#[test]
fn truncated_and_corrupt_archives_fail_and_leave_the_disk_blank() {
    let dir = TestDir::new("corrupt");
    let raw = disk_image(4, 16 * MIB);
    fs::write(dir.path("disk.img"), &raw).unwrap();
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for (suffix, enc) in encoders().into_iter().skip(1) {
        let data = enc(&raw);
        // Cut well past the first MiB of output, so the probe passes and the stream fails.
        cases.push((format!("trunc.{suffix}"), data[..data.len() * 3 / 4].to_vec()));
        let mut bad = data.clone();
        let at = bad.len() * 3 / 5;
        for b in &mut bad[at..at + 64] {
            *b ^= 0x5a;
        }
        cases.push((format!("corrupt.{suffix}"), bad));
    }
    let q = dir.path("full.qcow2");
    qcow2(&dir.path("disk.img"), &q, &["-c"]);
    let qdata = fs::read(&q).unwrap();
    cases.push(("trunc.qcow2".into(), qdata[..qdata.len() * 3 / 4].to_vec()));
    for (name, data) in cases {
        let src = dir.path(&name);
        fs::write(&src, data).unwrap();
        let l = Loop::new(&dir, "target", 24 * MIB);
        let before = sha256(&l.read(0, 24 * MIB));
        let o = flash(&src, &l.dev, &[]);
        let err = stderr(&o);
        assert!(
            err.contains("decoding") || err.contains("reading") || err.contains("truncated"),
            "{name}: unclear error: {err}"
        );
        assert!(err.contains(&name), "{name}: error does not name the source: {err}");
        match o.status.code() {
            // Found while writing: the disk must read as blank.
            Some(2) => assert_blank(&l),
            // Found up front from the container's metadata (xz index, zstd frames): untouched.
            Some(1) => {
                assert_eq!(sha256(&l.read(0, 24 * MIB)), before, "{name}: refused but changed")
            }
            other => panic!("{name} should fail, exited {other:?}: {err}"),
        }
    }
}

#[test]
fn trailing_garbage_after_gzip_fails() {
    let dir = TestDir::new("garbage");
    let raw = disk_image(5, 4 * MIB);
    let mut data = gzip(&raw);
    data.extend_from_slice(b"this is not another gzip member");
    let src = dir.path("disk.img.gz");
    fs::write(&src, data).unwrap();
    let o = flash(&src, &dir.path("out.img"), &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn too_small_target_is_refused_before_any_write() {
    let dir = TestDir::new("small");
    let raw = disk_image(6, 20 * MIB);
    let src = dir.path("disk.img.xz");
    fs::write(&src, xz(&raw)).unwrap();
    let l = Loop::new(&dir, "target", 16 * MIB);
    let before = sha256(&l.read(0, 16 * MIB));
    let o = flash(&src, &l.dev, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("the target holds"), "{}", stderr(&o));
    assert_eq!(sha256(&l.read(0, 16 * MIB)), before, "a refused flash changed the target");
}

#[test]
fn unknown_size_stops_at_the_targets_end() {
    let dir = TestDir::new("unknown-size");
    let raw = disk_image(7, 20 * MIB);
    let src = dir.path("disk.img.gz"); // gzip records no size: found out while writing
    fs::write(&src, gzip(&raw)).unwrap();
    let l = Loop::new(&dir, "target", 16 * MIB);
    let o = flash(&src, &l.dev, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("larger than the target"), "{}", stderr(&o));
    assert_blank(&l);
}

#[test]
fn mounted_target_is_refused() {
    let dir = TestDir::new("mounted");
    let l = Loop::new(&dir, "target", 16 * MIB);
    let st = Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&l.dev).status().expect("mkfs.ext4");
    assert!(st.success());
    let mnt = dir.path("mnt");
    fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount").arg(&l.dev).arg(&mnt).status().expect("mount");
    assert!(st.success(), "mount failed");
    let src = dir.path("disk.img");
    fs::write(&src, disk_image(8, 2 * MIB)).unwrap();
    let o = flash(&src, &l.dev, &[]);
    let _ = Command::new("umount").arg(&mnt).status();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("mounted on") && err.contains(&l.dev.display().to_string()), "{err}");
}

#[test]
fn block_device_without_yes_and_without_a_terminal_is_refused() {
    let dir = TestDir::new("noyes");
    let l = Loop::new(&dir, "target", 8 * MIB);
    let src = dir.path("disk.img");
    fs::write(&src, disk_image(9, 2 * MIB)).unwrap();
    let before = sha256(&l.read(0, 8 * MIB));
    let o = bty().arg("flash").arg(&src).arg(&l.dev).stdin(Stdio::null()).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("without --yes"), "{}", stderr(&o));
    assert_eq!(sha256(&l.read(0, 8 * MIB)), before);
}

#[test]
fn symlinked_target_is_followed() {
    let dir = TestDir::new("symlink");
    let l = Loop::new(&dir, "target", 8 * MIB);
    let link = dir.path("by-id-disk");
    std::os::unix::fs::symlink(&l.dev, &link).unwrap();
    let raw = disk_image(10, 4 * MIB);
    let src = dir.path("disk.img.bz2");
    fs::write(&src, bzip2(&raw)).unwrap();
    let o = flash(&src, &link, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains(&l.dev.display().to_string()), "{}", stderr(&o));
    assert_eq!(sha256(&l.read(0, raw.len())), sha256(&raw));
}

/// Starts a flash from a pipe we control, feeds part of the image, waits until bty reports
/// progress, and returns the child with its stdin still open (bty blocked on the pipe).
fn start_stalled_flash(l: &Loop, data: &[u8]) -> std::process::Child {
    let mut child = bty()
        .args(["flash", "-", "--yes", "--progress", "json"])
        .arg(&l.dev)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Enough for the probe (4 MiB) and a few blocks to be written.
    stdin.write_all(&data[..data.len() / 2]).unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = lines.next().expect("bty ended early").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["written_bytes"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no write progress within 30 s");
    }
    // Keep the pipe open: bty is now stuck reading it, as with a stalled network source.
    std::mem::forget(stdin);
    child
}

#[test]
fn sigint_mid_flash_exits_130_with_a_blank_disk() {
    let dir = TestDir::new("sigint");
    let raw = disk_image(11, 24 * MIB);
    let l = Loop::new(&dir, "target", 32 * MIB);
    let mut child = start_stalled_flash(&l, &raw);
    let sent = Instant::now();
    let st = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(st.success());
    let status = child.wait().unwrap();
    let stop = sent.elapsed();
    assert_eq!(status.code(), Some(130));
    // Not a timing assertion on speed: a cancel that ignored the signal would hang here.
    assert!(stop < Duration::from_secs(10), "cancel took {stop:?}");
    assert_blank(&l);
}

#[test]
fn sigkill_mid_flash_leaves_a_blank_first_mib() {
    let dir = TestDir::new("sigkill");
    let raw = disk_image(12, 24 * MIB);
    let l = Loop::new(&dir, "target", 32 * MIB);
    // Make the old content look like a disk, to see it does not survive.
    let mut child = start_stalled_flash(&l, &raw);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(is_zero(&l.read(0, MIB)), "first MiB survived a killed flash");
}

#[test]
fn verify_detects_a_byte_changed_behind_our_back() {
    let dir = TestDir::new("verify");
    let raw = disk_image(13, 12 * MIB);
    let src = dir.path("disk.img.zst");
    fs::write(&src, zstd(&raw)).unwrap();
    let l = Loop::new(&dir, "target", 16 * MIB);
    // First a clean verified flash.
    let o = flash(&src, &l.dev, &["--verify"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("verified"), "{}", stderr(&o));

    let hook = dir.path("hook");
    fs::create_dir(&hook).unwrap();
    let child = bty()
        .args(["flash", "--yes", "--verify", "--progress", "none"])
        .arg(&src)
        .arg(&l.dev)
        .env("BTY_TEST_VERIFY_PAUSE", &hook)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !hook.join("paused").exists() {
        assert!(Instant::now() < deadline, "bty never reached verification");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Flip a byte 5 MiB + 123 in, through the device (bty holds it exclusively but not against writes).
    let at = 5 * MIB as u64 + 123;
    let dev = fs::OpenOptions::new().read(true).write(true).open(&l.dev).unwrap();
    let mut b = [0u8; 1];
    dev.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0xff;
    dev.write_all_at(&b, at).unwrap();
    dev.sync_all().unwrap();
    fs::write(hook.join("resume"), b"").unwrap();
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("offset {}", 5 * MIB)), "{err}");
    assert_blank(&l);
}

#[test]
fn regular_file_targets_round_trip_at_awkward_sizes() {
    let dir = TestDir::new("sizes");
    for len in
        [1usize, 511, 512, 4095, 4096, 4097, MIB - 1, MIB, MIB + 1, 4 * MIB + 1, 5 * MIB + 512]
    {
        let raw = disk_image(len as u64, len);
        for (suffix, enc) in encoders() {
            let src = dir.path(&format!("s{len}.{suffix}"));
            fs::write(&src, enc(&raw)).unwrap();
            let out = dir.path("out.img");
            let _ = fs::remove_file(&out);
            let o = flash(&src, &out, &["--verify"]);
            assert!(o.status.success(), "{len} {suffix}: {}", stderr(&o));
            assert_eq!(fs::read(&out).unwrap(), raw, "{len} {suffix}");
        }
    }
}

/// bzip2 files of the parallel compressors decode block-parallel (src/image/bzip2_mt.rs):
/// lbzip2's single stream and pbzip2's one stream per 100k block, and a damaged one fails.
#[test]
fn lbzip2_and_pbzip2_images_round_trip_and_a_damaged_one_fails() {
    let dir = TestDir::new("pbzip2");
    let raw = disk_image(19, 8 * MIB);
    fs::write(dir.path("raw.img"), &raw).unwrap();
    for (tool, args) in [("lbzip2", &["-9", "-n", "2"][..]), ("pbzip2", &["-1", "-b1", "-p2"][..])]
    {
        let o = Command::new(tool).args(args).args(["-k", "-c"]).arg(dir.path("raw.img")).output();
        let o = o.unwrap_or_else(|e| panic!("running {tool} (install it: make deps): {e}"));
        assert!(o.status.success(), "{tool}");
        let src = dir.path(&format!("{tool}.img.bz2"));
        fs::write(&src, &o.stdout).unwrap();
        let out = dir.path(&format!("{tool}.out"));
        let f = flash(&src, &out, &["--verify"]);
        assert!(f.status.success(), "{tool}: {}", stderr(&f));
        assert_eq!(fs::read(&out).unwrap(), raw, "{tool}");
        let mut bad = o.stdout.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x04;
        fs::write(&src, &bad).unwrap();
        let f = flash(&src, &out, &[]);
        assert!(!f.status.success(), "{tool} damaged: {}", stderr(&f));
        assert!(stderr(&f).contains("decoding bzip2 block "), "{tool} damaged: {}", stderr(&f));
    }
}

#[test]
fn regular_file_target_keeps_length_and_zeroes_old_data() {
    let dir = TestDir::new("filetarget");
    let raw = disk_image(14, 6 * MIB);
    let src = dir.path("disk.img.gz");
    fs::write(&src, gzip(&raw)).unwrap();
    let out = dir.path("out.img");
    fs::write(&out, prng_bytes(99, 10 * MIB)).unwrap();
    let o = flash(&src, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = fs::read(&out).unwrap();
    assert_eq!(got.len(), 10 * MIB, "a larger file keeps its length, like a disk");
    assert_eq!(&got[..raw.len()], &raw[..]);
    assert!(is_zero(&got[got.len() - MIB..]), "last MiB blanked");
}

#[test]
fn file_system_without_o_direct_falls_back_to_buffered_writes() {
    let dir = TestDir::new("ramfs");
    let mnt = dir.path("mnt");
    fs::create_dir(&mnt).unwrap();
    // ramfs has no O_DIRECT (tmpfs has it since Linux 6.6).
    let st = Command::new("mount").args(["-t", "ramfs", "bty-test"]).arg(&mnt).status().unwrap();
    assert!(st.success());
    let raw = disk_image(15, 4 * MIB);
    let src = dir.path("disk.img.xz");
    fs::write(&src, xz(&raw)).unwrap();
    let o = flash(&src, &mnt.join("out.img"), &["--verify"]);
    let got = fs::read(mnt.join("out.img"));
    let _ = Command::new("umount").arg(&mnt).status();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("buffered"), "{}", stderr(&o));
    assert_eq!(got.unwrap(), raw);
}

#[test]
fn full_file_system_fails_with_a_clear_error_and_a_blank_head() {
    let dir = TestDir::new("tmpfs");
    let mnt = dir.path("mnt");
    fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m", "bty-test"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success());
    let big = disk_image(16, 12 * MIB);
    let bsrc = dir.path("big.img.zst");
    fs::write(&bsrc, zstd(&big)).unwrap();
    let full = flash(&bsrc, &mnt.join("big.img"), &["--no-zero-skip"]);
    let big_head = fs::read(mnt.join("big.img")).map(|b| b[..MIB.min(b.len())].to_vec());
    let _ = Command::new("umount").arg(&mnt).status();
    assert_eq!(full.status.code(), Some(2), "{}", stderr(&full));
    assert!(stderr(&full).contains("no space left"), "{}", stderr(&full));
    assert!(is_zero(&big_head.unwrap()), "first MiB of a failed file target is not blank");
}

#[test]
fn name_and_content_must_agree_and_tarballs_are_refused() {
    let dir = TestDir::new("names");
    let raw = disk_image(17, 2 * MIB);
    let out = dir.path("out.img");
    let src = dir.path("disk.img.zst");
    fs::write(&src, gzip(&raw)).unwrap();
    let o = flash(&src, &out, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("named like a zstd image but its content is gzip"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists(), "a refused flash created the target");

    // A gzip'd tar under an innocent name: refused from its decoded content.
    let mut tar = vec![0u8; 1024];
    tar[..8].copy_from_slice(b"disk.img");
    tar[257..263].copy_from_slice(b"ustar\0");
    let src = dir.path("image.gz");
    fs::write(&src, gzip(&tar)).unwrap();
    let o = flash(&src, &out, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("tar archive"), "{}", stderr(&o));

    let src = dir.path("rootfs.tar.xz");
    fs::write(&src, xz(&raw)).unwrap();
    let o = flash(&src, &out, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("tar archive"), "{}", stderr(&o));
}

#[test]
fn missing_source_and_bad_arguments_have_clear_errors() {
    let dir = TestDir::new("args");
    let o = flash(Path::new("/nonexistent/disk.img"), &dir.path("out"), &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("opening /nonexistent/disk.img"), "{}", stderr(&o));
    let o = bty().args(["flash", "only-one"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("SOURCE and TARGET"), "{}", stderr(&o));
    let o = bty().args(["flash", "a", "b", "--progress", "fancy"]).output().unwrap();
    assert!(stderr(&o).contains("invalid --progress"), "{}", stderr(&o));
    let o = bty().args(["frobnicate"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let o = bty().arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("bty "));
    let o = bty().arg("--help").output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("bty flash SOURCE TARGET"));
}

#[test]
fn pipe_sources_flash_and_qcow2_pipes_are_refused() {
    let dir = TestDir::new("pipe");
    let raw = disk_image(18, 6 * MIB);
    let out = dir.path("out.img");
    let mut child = bty()
        .args(["flash", "-", "--progress", "none"])
        .arg(&out)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let data = bzip2(&raw);
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(fs::read(&out).unwrap(), raw);

    fs::write(dir.path("raw.img"), &raw).unwrap();
    qcow2(&dir.path("raw.img"), &dir.path("d.qcow2"), &[]);
    let o = bty()
        .args(["flash", "-", "--progress", "none"])
        .arg(dir.path("out2.img"))
        .stdin(fs::File::open(dir.path("d.qcow2")).unwrap())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("random access"), "{}", stderr(&o));
}

#[test]
fn device_without_write_zeroes_gets_zeros_written_as_data() {
    let dir = TestDir::new("nozeroes");
    let mnt = dir.path("mnt");
    fs::create_dir(&mnt).unwrap();
    // A loop device over a ramfs file advertises no write-zeroes (ramfs has no fallocate).
    let st = Command::new("mount").args(["-t", "ramfs", "bty-test"]).arg(&mnt).status().unwrap();
    assert!(st.success());
    let result = std::panic::catch_unwind(|| {
        let l = Loop::over(mnt.join("backing"), 16 * MIB);
        let name = l.dev.file_name().unwrap().to_string_lossy().into_owned();
        let wz =
            fs::read_to_string(format!("/sys/block/{name}/queue/write_zeroes_max_bytes")).unwrap();
        assert_eq!(wz.trim(), "0", "expected a device without write-zeroes");
        let raw = disk_image(19, 12 * MIB);
        let src = dir.path("disk.img.gz");
        fs::write(&src, gzip(&raw)).unwrap();
        let o = flash(&src, &l.dev, &["--verify"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stderr(&o).contains("0 B skipped as zeros"), "{}", stderr(&o));
        assert_eq!(sha256(&l.read(0, raw.len())), sha256(&raw));
    });
    let _ = Command::new("umount").arg(&mnt).status();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// Runs `bty flash` (without --yes) on a pseudo-terminal made by script(1), typing `answer`.
fn flash_on_a_terminal(src: &Path, target: &Path, answer: &str) -> (Option<i32>, String) {
    let cmd = format!(
        "{} flash --progress none {} {}",
        env!("CARGO_BIN_EXE_bty"),
        src.display(),
        target.display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running script(1) (util-linux bsdutils)");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("{answer}\n").as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    drop(stdin);
    (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned())
}

#[test]
fn terminal_confirmation_needs_the_device_name() {
    let dir = TestDir::new("confirm");
    let l = Loop::new(&dir, "target", 8 * MIB);
    let name = l.dev.file_name().unwrap().to_string_lossy().into_owned();
    let raw = disk_image(20, 4 * MIB);
    let src = dir.path("disk.img");
    fs::write(&src, &raw).unwrap();
    let before = sha256(&l.read(0, 8 * MIB));

    let (code, screen) = flash_on_a_terminal(&src, &l.dev, "yes");
    assert_eq!(code, Some(1), "{screen}");
    assert!(screen.contains(&format!("Type the device name ({name})")), "{screen}");
    assert!(screen.contains("nothing was written"), "{screen}");
    assert_eq!(sha256(&l.read(0, 8 * MIB)), before);

    let (code, screen) = flash_on_a_terminal(&src, &l.dev, &name);
    assert_eq!(code, Some(0), "{screen}");
    assert_eq!(sha256(&l.read(0, raw.len())), sha256(&raw));
}

#[test]
fn sparse_raw_source_reads_holes_as_zeros_and_pins_its_digest() {
    let dir = TestDir::new("sparse");
    let src = dir.path("sparse.img");
    let len = 24 * MIB;
    let f = fs::File::create(&src).unwrap();
    f.set_len(len as u64).unwrap();
    // Data islands between holes, one of them unaligned and one at the very end.
    let mut want = vec![0u8; len];
    for (at, n) in [(0usize, 4096usize), (3 * MIB + 17, 70_000), (9 * MIB, MIB), (len - 5000, 5000)]
    {
        let data = prng_bytes(at as u64, n);
        f.write_all_at(&data, at as u64).unwrap();
        want[at..at + n].copy_from_slice(&data);
    }
    drop(f);
    let l = Loop::new(&dir, "target", 24 * MIB);
    let o = flash(&src, &l.dev, &["--sha256", &sha256(&want)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sha256(&l.read(0, len)), sha256(&want));
    let o = flash(&src, &l.dev, &["--sha256", &"0".repeat(64)]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_blank(&l);
}

#[test]
fn read_only_device_is_refused() {
    let dir = TestDir::new("readonly");
    fs::write(dir.path("backing"), prng_bytes(1, 8 * MIB)).unwrap();
    let l = Loop::attach(&dir.path("backing"), &["-r"]);
    let src = dir.path("disk.img");
    fs::write(&src, disk_image(21, 2 * MIB)).unwrap();
    let o = flash(&src, &l.dev, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("read-only"), "{}", stderr(&o));
}

/// A 32 MiB loop device with one GPT partition, and a node for that partition made from
/// sysfs (without udev no /dev node appears for it).
fn one_partition_disk(dir: &TestDir) -> (Loop, std::path::PathBuf) {
    let backing = dir.path("backing");
    fs::File::create(&backing).unwrap().set_len(32 * MIB as u64).unwrap();
    let st = Command::new("sgdisk").args(["-o", "-n", "1:2048:0"]).arg(&backing).output().unwrap();
    assert!(st.status.success());
    let l = Loop::attach(&backing, &["-P"]);
    let name = l.dev.file_name().unwrap().to_string_lossy().into_owned();
    let sys = format!("/sys/block/{name}/{name}p1/dev");
    // Partition scanning on attach is not reliable everywhere; partx asks the kernel directly.
    let _ = Command::new("partx").arg("-a").arg(&l.dev).output();
    let mut devno = String::new();
    for _ in 0..50 {
        if let Ok(d) = fs::read_to_string(&sys) {
            devno = d.trim().to_string();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (maj, min) = devno.split_once(':').expect("the kernel created the partition");
    let part = dir.path("part1");
    assert!(Command::new("mknod").arg(&part).args(["b", maj, min]).status().unwrap().success());
    (l, part)
}

#[test]
fn disk_with_a_mounted_partition_is_refused() {
    let dir = TestDir::new("mounted-part");
    let (l, part) = one_partition_disk(&dir);
    let part = part.display().to_string();
    let mnt = dir.path("mnt");
    fs::create_dir(&mnt).unwrap();
    assert!(Command::new("mkfs.ext4").args(["-q", "-F", &part]).status().unwrap().success());
    assert!(Command::new("mount").arg(&part).arg(&mnt).status().unwrap().success());
    let src = dir.path("disk.img");
    fs::write(&src, disk_image(22, 2 * MIB)).unwrap();
    let o = flash(&src, &l.dev, &[]);
    let _ = Command::new("umount").arg(&mnt).status();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("{part} is mounted on")), "{}", stderr(&o));
}

#[test]
fn swap_device_is_refused() {
    let dir = TestDir::new("swap");
    let l = Loop::new(&dir, "target", 16 * MIB);
    assert!(Command::new("mkswap").arg(&l.dev).output().unwrap().status.success());
    assert!(Command::new("swapon").arg(&l.dev).status().unwrap().success(), "swapon failed");
    let src = dir.path("disk.img");
    fs::write(&src, disk_image(23, 2 * MIB)).unwrap();
    let o = flash(&src, &l.dev, &[]);
    let _ = Command::new("swapoff").arg(&l.dev).status();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("in use as swap"), "{}", stderr(&o));
}

/// The source as its own target used to fail mid-write and then blank the source's first and
/// last MiB: it is refused before anything is written, whichever name reaches the same file.
#[test]
fn source_file_as_its_own_target_is_refused_and_kept_intact() {
    let dir = TestDir::new("self-target");
    let src = dir.path("disk.img.zst");
    let data = util::zstd(&disk_image(31, 3 * MIB));
    fs::write(&src, &data).unwrap();
    let link = dir.path("link.img.zst");
    std::os::unix::fs::symlink(&src, &link).unwrap();
    let hard = dir.path("hard.img.zst");
    fs::hard_link(&src, &hard).unwrap();
    for target in [&src, &link, &hard] {
        let o = flash(&src, target, &[]);
        let err = stderr(&o);
        assert!(!o.status.success(), "{err}");
        assert!(err.contains("is the source image") && err.contains("same file"), "{err}");
        assert!(err.contains("nothing was written"), "{err}");
        assert_eq!(fs::read(&src).unwrap(), data, "{}: the source is intact", target.display());
    }
}

#[test]
fn loop_device_backed_by_the_source_is_refused() {
    let dir = TestDir::new("self-loop");
    let src = dir.path("disk.img");
    let data = disk_image(32, 4 * MIB);
    fs::write(&src, &data).unwrap();
    let l = Loop::attach(&src, &[]);
    let o = flash(&src, &l.dev, &[]);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("loop device backed by the source image"), "{err}");
    assert_eq!(fs::read(&src).unwrap(), data, "the source is intact");
    // The device read as the source of a flash onto itself.
    let o = flash(&l.dev, &l.dev, &[]);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("is this device, lies on it or holds it"), "{err}");
    assert_eq!(fs::read(&src).unwrap(), data, "the source is intact");
    // The loop device read as the source of a flash onto the file behind it.
    let o = flash(&l.dev, &src, &[]);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("is a loop device backed by this file"), "{err}");
    assert_eq!(fs::read(&src).unwrap(), data, "the source is intact");
}

/// A source file on a file system on the target: refused for that reason (before the mount
/// rule, which would say less), and the file system and the image are untouched.
#[test]
fn device_holding_the_source_file_system_is_refused() {
    let dir = TestDir::new("self-fs");
    let l = Loop::new(&dir, "target", 16 * MIB);
    let st = Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&l.dev).status().expect("mkfs.ext4");
    assert!(st.success());
    let mnt = dir.path("mnt");
    fs::create_dir(&mnt).unwrap();
    assert!(Command::new("mount").arg(&l.dev).arg(&mnt).status().unwrap().success());
    let src = mnt.join("disk.img");
    let data = disk_image(33, 2 * MIB);
    fs::write(&src, &data).unwrap();
    // Read-only from here: only bty could change the device below (no atime, no write-back).
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
    assert!(
        Command::new("mount").args(["-o", "ro"]).arg(&l.dev).arg(&mnt).status().unwrap().success()
    );
    let head = l.read(0, 2 * MIB);
    let o = flash(&src, &l.dev, &[]);
    let intact = fs::read(&src).unwrap() == data;
    // Read before unmounting: the unmount itself updates the superblock.
    let unchanged = l.read(0, 2 * MIB) == head;
    let _ = Command::new("umount").arg(&mnt).status();
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("lives on a file system on this device"), "{err}");
    assert!(err.contains(&l.dev.display().to_string()), "{err}");
    assert!(intact, "the source is intact");
    assert!(unchanged, "nothing was written to the device");
}

/// `data` as xz whose first block header declares an LZMA2 dictionary of code `d` (37 is
/// 1536 MiB, 29 is 96 MiB): the data chunks do not depend on it, so the stream stays valid and
/// small while a decoder must still reserve the declared dictionary.
fn xz_declaring_dict(data: &[u8], d: u8) -> Vec<u8> {
    let mut x = xz(data);
    let size = (x[12] as usize + 1) * 4;
    let header = &mut x[12..12 + size];
    // Flags, the sizes the threaded encoder records (variable-length integers), then the
    // LZMA2 filter (0x21) with its one property byte.
    let mut pos = 2;
    for _ in 0..(header[1] >> 6).count_ones() {
        while header[pos] & 0x80 != 0 {
            pos += 1;
        }
        pos += 1;
    }
    assert_eq!(&header[pos..pos + 2], &[0x21, 0x01], "an LZMA2 filter first: {header:?}");
    header[pos + 2] = d;
    let mut crc = flate2::Crc::new();
    crc.update(&header[..size - 4]);
    header[size - 4..].copy_from_slice(&crc.sum().to_le_bytes());
    x
}

/// An xz stream that needs more memory than the decoder's limit is refused, naming both; the
/// limit can be raised (or lowered) with BTY_XZ_MEMLIMIT.
#[test]
fn xz_needing_more_memory_than_the_limit_is_refused() {
    let dir = TestDir::new("xz-memlimit");
    let raw = disk_image(41, 3 * MIB);
    let l = Loop::new(&dir, "target", 4 * MIB);
    let before = l.read(0, 4 * MIB);
    let huge = dir.path("huge.img.xz");
    fs::write(&huge, xz_declaring_dict(&raw, 37)).unwrap();
    // The default limit (1 GiB at most) refuses a 1536 MiB dictionary.
    let o = bty()
        .arg("flash")
        .arg(&huge)
        .arg(&l.dev)
        .args(["--yes", "--progress", "none"])
        .env_remove("BTY_XZ_MEMLIMIT")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("refusing to decode the xz stream"), "{err}");
    assert!(err.contains("1610612736 bytes") && err.contains("BTY_XZ_MEMLIMIT"), "{err}");
    assert!(l.read(0, 4 * MIB) == before, "nothing was written");

    let mid = dir.path("mid.img.xz");
    fs::write(&mid, xz_declaring_dict(&raw, 29)).unwrap();
    let o = flash_env(&mid, &l.dev, &[("BTY_XZ_MEMLIMIT", "64MiB")]);
    let err = stderr(&o);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("100663296 bytes") && err.contains("(67108864 bytes;"), "{err}");
    assert!(l.read(0, 4 * MIB) == before, "nothing was written");
    let o = flash_env(&mid, &l.dev, &[("BTY_XZ_MEMLIMIT", "bogus")]);
    assert!(stderr(&o).contains("BTY_XZ_MEMLIMIT=\"bogus\""), "{}", stderr(&o));

    // Raised above the need, the same file flashes.
    let o = flash_env(&mid, &l.dev, &[("BTY_XZ_MEMLIMIT", "128MiB")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(l.read(0, raw.len()) == raw, "the disk holds the image");
}

fn flash_env(src: &Path, target: &Path, env: &[(&str, &str)]) -> std::process::Output {
    bty()
        .arg("flash")
        .arg(src)
        .arg(target)
        .args(["--yes", "--progress", "none"])
        .envs(env.iter().copied())
        .output()
        .expect("running bty")
}

/// The source file on a file system on one of the target's partitions: the whole disk is
/// refused for that reason, and so is the partition itself.
#[test]
fn disk_whose_partition_holds_the_source_is_refused() {
    let dir = TestDir::new("self-part");
    let (l, part) = one_partition_disk(&dir);
    assert!(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&part).status().unwrap().success());
    let mnt = dir.path("mnt");
    fs::create_dir(&mnt).unwrap();
    assert!(Command::new("mount").arg(&part).arg(&mnt).status().unwrap().success());
    let src = mnt.join("disk.img");
    let data = disk_image(34, 2 * MIB);
    fs::write(&src, &data).unwrap();
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
    let ro = Command::new("mount").args(["-o", "ro"]).arg(&part).arg(&mnt).status().unwrap();
    assert!(ro.success());
    let head = l.read(0, 2 * MIB);
    let whole = flash(&src, &l.dev, &[]);
    let partition = flash(&src, &part, &[]);
    let intact = fs::read(&src).unwrap() == data;
    let unchanged = l.read(0, 2 * MIB) == head;
    let _ = Command::new("umount").arg(&mnt).status();
    for o in [&whole, &partition] {
        let err = stderr(o);
        assert!(!o.status.success(), "{err}");
        assert!(err.contains("lives on a file system on this device"), "{err}");
    }
    assert!(intact, "the source is intact");
    assert!(unchanged, "nothing was written to the disk");
}

#[test]
fn four_k_native_disk_takes_images_whose_length_is_not_a_multiple_of_4096() {
    let dir = TestDir::new("4kn");
    let backing = dir.path("backing");
    fs::write(&backing, prng_bytes(41, 8 * MIB)).unwrap();
    // A 4Kn disk: O_DIRECT writes must be whole 4096-byte blocks at 4096-aligned offsets.
    let l = Loop::attach(&backing, &["-b", "4096", "--direct-io=on"]);
    let name = l.dev.file_name().unwrap().to_string_lossy().into_owned();
    let lbs = fs::read_to_string(format!("/sys/block/{name}/queue/logical_block_size")).unwrap();
    assert_eq!(lbs.trim(), "4096");
    // Data past the first MiB whose length is a multiple of 512 but not of 4096, then the same
    // with a zero tail of that shape (the zero path), each with --verify.
    for (i, tail_zeros) in [(0u64, 0usize), (1, 3 * 512)] {
        let mut raw = disk_image(40 + i, MIB + 64 * 1024 + 1536);
        raw.extend(std::iter::repeat_n(0u8, tail_zeros));
        let src = dir.path(&format!("odd-{i}.img"));
        fs::write(&src, &raw).unwrap();
        let o = flash(&src, &l.dev, &["--verify"]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(sha256(&l.read(0, raw.len())), sha256(&raw), "case {i}");
    }
}
