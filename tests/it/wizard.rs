//! The wizard (`bty` with no command) driven through tmux like an operator at a terminal:
//! keys in with `send-keys`, the screen read back with `capture-pane`. Targets are loop
//! devices, listed as disks through the `BTY_TEST_SERIALS` test hook; reboot is the
//! `BTY_TEST_NO_REBOOT` hook.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util;
use crate::util::httpd::{Fault, Httpd};
use crate::util::{Loop, TestDir};

/// A bty wizard in a detached tmux session of 80x24 (a framebuffer console) on a tmux server of its own.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// Starts `bty ARGS` with `env` in a shell that survives Ctrl+C and reports the exit status.
    fn start(name: &str, env: &[(&str, &str)], args: &[&str]) -> Tmux {
        Tmux::start_sized(name, (80, 24), env, args)
    }

    /// As `start`, on a terminal of `cols` x `rows`.
    fn start_sized(
        name: &str,
        (cols, rows): (u16, u16),
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Tmux {
        let socket = format!("bty-test-{}-{name}", std::process::id());
        let mut cmd = String::from("trap : INT; env -u BTY_LOG");
        for (k, v) in env {
            cmd.push_str(&format!(" {k}='{v}'"));
        }
        cmd.push_str(&format!(" {}", env!("CARGO_BIN_EXE_bty")));
        for a in args {
            cmd.push_str(&format!(" '{a}'"));
        }
        cmd.push_str("; echo EXITED=$?; sleep 600");
        let st = Command::new("tmux")
            .args(["-L", &socket, "-f", "/dev/null", "new-session", "-d"])
            .args(["-x", &cols.to_string(), "-y", &rows.to_string()])
            .args(["sh", "-c", &cmd])
            .status()
            .expect("running tmux (make deps installs it)");
        assert!(st.success(), "tmux new-session failed");
        Tmux { socket }
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux").args(["-L", &self.socket]).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `text` and Enter.
    fn line(&self, text: &str) {
        if !text.is_empty() {
            self.tmux(&["send-keys", "-l", text]);
        }
        self.tmux(&["send-keys", "Enter"]);
    }

    fn keys(&self, key: &str) {
        self.tmux(&["send-keys", key]);
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p"])
    }

    /// Waits (at most 30 s) until the screen shows `needle`; returns the screen.
    fn wait(&self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if s.contains(needle) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out waiting for {needle:?}; the screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Types `text`, Enter, and waits for `needle`.
    fn answer(&self, text: &str, needle: &str) -> String {
        self.line(text);
        self.wait(needle)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.tmux(&["kill-server"]);
    }
}

/// The row number the screen gives the disk `dev`.
fn row_of(screen: &str, dev: &Path) -> String {
    let dev = dev.display().to_string();
    let line = screen
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(dev.as_str()))
        .unwrap_or_else(|| panic!("{dev} is not listed:\n{screen}"));
    line.split_whitespace().next().unwrap().to_string()
}

fn serials(disks: &[&Loop]) -> String {
    let v: Vec<String> =
        disks.iter().enumerate().map(|(i, l)| format!("{}=WIZ-{i}", l.dev.display())).collect();
    v.join(",")
}

fn env_with<'a>(serials: &'a str, reboot: &'a Path) -> Vec<(&'a str, &'a str)> {
    vec![
        ("BTY_TEST_SERIALS", serials),
        ("BTY_TEST_NO_REBOOT", reboot.to_str().unwrap()),
        ("TERM", "xterm"),
    ]
}

#[test]
fn wizard_flashes_a_local_image_onto_a_loop_disk_and_reboots_when_asked() {
    let dir = TestDir::new("wiz-local");
    let root = dir.path("images");
    std::fs::create_dir(&root).unwrap();
    let image = util::disk_image(21, 6 << 20);
    std::fs::write(root.join("lab-debian-amd64.img"), &image).unwrap();
    let disk = Loop::new(&dir, "disk", 16 << 20);
    let (s, reboot) = (serials(&[&disk]), dir.path("reboot"));
    let t = Tmux::start("local", &env_with(&s, &reboot), &["--image-root", root.to_str().unwrap()]);
    // The image root has images: the catalog step is skipped.
    let screen = t.wait("Pick an image");
    assert!(screen.contains("lab-debian-amd64.img") && screen.contains("local"), "{screen}");
    assert!(screen.contains(&format!("image root {}", root.display())), "{screen}");
    let screen = t.answer("1", "Pick the disk");
    let screen = t.answer(&row_of(&screen, &disk.dev), "About to flash");
    for want in ["lab-debian-amd64.img", "raw", "6.0 MiB", "WIZ-0", "everything on"] {
        assert!(screen.contains(want), "{want:?} missing:\n{screen}");
    }
    // A workstation (not bty's live environment): Enter exits, a reboot must be picked, and it
    // goes through the init system, never a raw reboot(2).
    let screen = t.answer("yes", "[s] exit to the shell (default)");
    assert!(screen.contains("Wrote lab-debian-amd64.img"), "{screen}");
    assert!(!screen.contains("[r] reboot (default)"), "{screen}");
    t.answer("x", "unknown key 'x': type r, p, s or a (Enter exits)");
    assert!(!reboot.exists());
    t.answer("r", "EXITED=0");
    let line = std::fs::read_to_string(&reboot).unwrap();
    assert!(line.starts_with("reboot via ") && line != "reboot via reboot(2)\n", "{line:?}");
    assert_eq!(disk.read(0, image.len()), image);
}

#[test]
fn wizard_back_navigation_and_bad_input_messages() {
    let dir = TestDir::new("wiz-nav");
    let empty = dir.path("empty-root");
    std::fs::create_dir(&empty).unwrap();
    let img = dir.path("Nav-Image.img");
    std::fs::write(&img, util::disk_image(5, 2 << 20)).unwrap();
    let catalog = dir.path("My-Catalog.toml");
    std::fs::write(
        &catalog,
        format!(
            "version = 1\n[[images]]\nname = \"Nav-Image.img\"\nsrc = \"file://{}\"\n",
            img.display()
        ),
    )
    .unwrap();
    let disk = Loop::new(&dir, "disk", 8 << 20);
    let before = disk.read(0, 1 << 20);
    let (s, reboot) = (serials(&[&disk]), dir.path("reboot"));
    let mut env = env_with(&s, &reboot);
    env.push(("NO_COLOR", "1"));
    let t = Tmux::start("nav", &env, &["--image-root", empty.to_str().unwrap()]);
    t.wait("[Catalog]");
    t.answer("x", "unknown key 'x': type d, c, l or q");
    t.answer("", "nothing was typed: type d, c, l or q");
    t.answer("c", "Catalog source");
    // Typed text keeps its case, in the message too.
    t.answer("/No/Such/Catalog.toml", "loading the catalog /No/Such/Catalog.toml");
    t.answer("c", "Catalog source");
    let screen = t.answer(catalog.to_str().unwrap(), "[Image]");
    assert!(screen.contains("Nav-Image.img") && screen.contains("remote"), "{screen}");
    t.answer("9", "there is no image 9: pick a number from 1 to 1");
    // Text that is not a number or a key filters the list.
    t.answer("zz", "no rows matching \"zz\"");
    t.answer("1", "there is no image 1: none matches \"zz\"");
    t.answer("?", "\"?\" is not a choice: type r, b or q");
    t.answer("/", "rows 1-1 of 1");
    t.answer("b", "[Catalog]");
    let screen = t.answer("l", "[Image]");
    assert!(screen.contains("No images"), "{screen}");
    t.answer("1", "there is no image 1: the list is empty");
    t.answer("b", "[Catalog]");
    t.answer("c", "Catalog source");
    t.answer(catalog.to_str().unwrap(), "[Image]");
    t.answer("1", "[Disk]");
    t.answer("99", "there is no disk 99: pick a number from 1 to");
    t.answer("b", "[Image]");
    let screen = t.answer("1", "[Disk]");
    t.answer(&row_of(&screen, &disk.dev), "[Confirm]");
    t.answer("y", "type the whole word yes (lower case) to flash");
    t.answer("maybe", "\"maybe\" is not an answer here");
    t.answer("b", "[Disk]");
    t.answer("q", "EXITED=0");
    assert_eq!(disk.read(0, 1 << 20), before, "nothing was written");
    assert!(!reboot.exists());
}

#[test]
fn wizard_shows_a_mounted_disk_greyed_and_refuses_it() {
    let dir = TestDir::new("wiz-mounted");
    let root = dir.path("images");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("m.img"), util::disk_image(3, 2 << 20)).unwrap();
    let disk = Loop::new(&dir, "disk", 16 << 20);
    let st = Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&disk.dev).status().unwrap();
    assert!(st.success(), "mkfs.ext4 failed");
    let mnt = dir.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    assert!(Command::new("mount").arg(&disk.dev).arg(&mnt).status().unwrap().success());
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    let (s, reboot) = (serials(&[&disk]), dir.path("reboot"));
    let mut env = env_with(&s, &reboot);
    env.push(("NO_COLOR", "1"));
    let t = Tmux::start("mounted", &env, &["--image-root", root.to_str().unwrap()]);
    t.wait("[Image]");
    let screen = t.answer("1", "[Disk]");
    let why = format!("not writable: {} is mounted on", disk.dev.display());
    assert!(screen.contains(&why), "{why:?} missing:\n{screen}");
    // The reason is wrapped, not cut: the whole mount point is on the screen.
    let joined: String = screen.split_whitespace().collect();
    let mnt_text: String = mnt.display().to_string();
    assert!(joined.contains(&mnt_text), "{mnt_text} missing:\n{screen}");
    let row = row_of(&screen, &disk.dev);
    t.answer(&row, &format!("disk {row} ({}) cannot be written", disk.dev.display()));
    t.answer("q", "EXITED=0");
}

#[test]
fn wizard_flashes_from_an_http_catalog_and_ctrl_c_cancels_cleanly() {
    let dir = TestDir::new("wiz-http");
    let http = Httpd::start();
    let slow = util::disk_image(9, 8 << 20);
    http.file("/slow.img", slow, true, None);
    // Every response of the slow image stops for a long while after 4 MiB: time for Ctrl+C.
    http.faults("/slow.img", vec![Fault::Stall(4 << 20, Duration::from_secs(25)); 4]);
    let fast = util::disk_image(10, 4 << 20);
    http.file("/fast.img.gz", util::gzip(&fast), true, None);
    let catalog = format!(
        "version = 1\n[[images]]\nname = \"slow.img\"\nsrc = \"{}\"\n[[images]]\nname = \"fast.img.gz\"\nsrc = \"{}\"\nsha256 = \"{}\"\n",
        http.url("/slow.img"),
        http.url("/fast.img.gz"),
        util::sha256(&util::gzip(&fast)),
    );
    http.file("/catalog.toml", catalog.into_bytes(), false, None);
    let disk = Loop::new(&dir, "disk", 16 << 20);
    let (s, reboot) = (serials(&[&disk]), dir.path("reboot"));
    let url = http.url("/catalog.toml");
    let t = Tmux::start(
        "http",
        &env_with(&s, &reboot),
        &["--catalog", &url, "--image-root", "/nonexistent"],
    );
    let screen = t.wait("Pick an image");
    assert!(screen.contains("slow.img") && screen.contains("fast.img.gz"), "{screen}");
    let screen = t.answer("1", "Pick the disk");
    t.answer(&row_of(&screen, &disk.dev), "About to flash");
    t.answer("yes", "Ctrl+C cancels");
    t.wait("write [");
    std::thread::sleep(Duration::from_millis(500));
    t.keys("C-c");
    t.wait("flash cancelled");
    util::assert_blank(&disk);
    // The wizard goes on: back to the image list, the other image, the same disk.
    t.answer("b", "Pick an image");
    let screen = t.answer("2", "Pick the disk");
    let screen = t.answer(&row_of(&screen, &disk.dev), "About to flash");
    assert!(
        screen.contains(&format!("sha256 {}", &util::sha256(&util::gzip(&fast))[..40])),
        "{screen}"
    );
    t.answer("yes", "Wrote fast.img.gz");
    t.answer("", "EXITED=0");
    assert!(!reboot.exists(), "Enter on a workstation exits to the shell, no reboot");
    assert_eq!(disk.read(0, fast.len()), fast);
}

/// The image names of the table on `screen`, top to bottom, with their numbers.
fn image_rows(screen: &str) -> Vec<(usize, String)> {
    screen
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let n = w.next()?.parse().ok()?;
            let name = w.next().filter(|n| n.starts_with("img-"))?;
            Some((n, name.to_string()))
        })
        .collect()
}

/// The whole screen is the wizard's: its first line is the header, not scrolled off.
fn unscrolled(screen: &str) {
    let first = screen.lines().next().unwrap_or_default();
    assert!(first.starts_with("bty "), "the screen scrolled:\n{screen}");
}

#[test]
fn wizard_pages_and_filters_two_hundred_images_on_small_and_large_terminals() {
    let dir = TestDir::new("wiz-200");
    let root = dir.path("root");
    std::fs::create_dir(&root).unwrap();
    for i in 1..=200 {
        let f = std::fs::File::create(root.join(format!("img-{i}.img"))).unwrap();
        f.set_len(1 << 20).unwrap();
    }
    let disk = Loop::new(&dir, "disk", 8 << 20);
    let (s, reboot) = (serials(&[&disk]), dir.path("reboot"));
    let mut env = env_with(&s, &reboot);
    env.push(("NO_COLOR", "1"));
    let root_arg = root.to_str().unwrap();

    // 80x24: natural order (img-2 after img-1, not img-10), one screenful per page.
    let t = Tmux::start("p200", &env, &["--image-root", root_arg]);
    let screen = t.wait("\nImage:");
    unscrolled(&screen);
    let rows = image_rows(&screen);
    let per = rows.len();
    assert!(per >= 8, "too few rows on 80x24:\n{screen}");
    let want: Vec<(usize, String)> = (1..=per).map(|i| (i, format!("img-{i}.img"))).collect();
    assert_eq!(rows, want, "{screen}");
    assert!(screen.contains(&format!("rows 1-{per} of 200  [n] next page")), "{screen}");

    let screen = t.answer("n", &format!("rows {}-{} of 200", per + 1, 2 * per));
    unscrolled(&screen);
    assert_eq!(image_rows(&screen)[0], (per + 1, format!("img-{}.img", per + 1)), "{screen}");
    t.answer("p", &format!("rows 1-{per} of 200"));
    t.answer("p", "this is the first page");
    // A number is good on any page: image 150 is nowhere on screen.
    let screen = t.answer("150", "[Disk]");
    assert!(screen.contains("image      img-150.img"), "{screen}");
    t.answer("b", "[Image]");

    // A filter: img-19 and img-190 to img-199, numbered 1 to 11 in that list.
    let screen = t.answer("/img-19", "matching \"img-19\"");
    unscrolled(&screen);
    let rows = image_rows(&screen);
    assert_eq!(rows[0], (1, "img-19.img".to_string()), "{screen}");
    assert_eq!(rows[1], (2, "img-190.img".to_string()), "{screen}");
    let screen = t.answer("11", "[Disk]");
    assert!(screen.contains("image      img-199.img"), "{screen}");
    t.answer("b", "[Image]");
    t.answer("/", &format!("rows 1-{per} of 200"));
    t.answer("q", "EXITED=0");
    drop(t);

    // A large terminal shows more rows per page.
    let t = Tmux::start_sized("p200big", (160, 60), &env, &["--image-root", root_arg]);
    let screen = t.wait("\nImage:");
    unscrolled(&screen);
    let big = image_rows(&screen).len();
    assert!(big > 2 * per, "{big} rows on 160x60, {per} on 80x24:\n{screen}");
    assert_eq!(image_rows(&screen).last(), Some(&(big, format!("img-{big}.img"))));
    t.answer("q", "EXITED=0");
}
