//! The interactive wizard (`bty` with no subcommand): Catalog -> Image -> Disk -> Confirm ->
//! Flash -> Done on a plain terminal, one line of input per answer (a number and Enter, or a
//! letter), so it works the same on an 80x24 framebuffer, a serial console and a terminal
//! emulator.

mod pager;
mod screen;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::catalog::root::{self as images, ImageEntry, Origin};
use crate::catalog::{self, Catalog};
use crate::cli::WizardArgs;
use crate::disks::{self, Disk};
use crate::flash::progress::{Mode, Reporter};
use crate::flash::{self, FlashError, Options, Plan};
use crate::sys::PowerAction;
use crate::units;
use pager::{Move, Pager};
use screen::{Input, Screen, fit, parse_input};

/// The catalog behind `[d] default`: the one the upstream image builder publishes.
pub const DEFAULT_CATALOG: &str =
    "https://github.com/safl/nosi/releases/latest/download/catalog.toml";

/// Screen lines of the image and disk steps that are not table rows: the header (4; the disk
/// step adds the image's line), the title and column header (2), the status and key lines
/// (2), a message (2) and the prompt (2). The rest of the screen holds rows.
const IMAGE_STEP_LINES: usize = 12;
const DISK_STEP_LINES: usize = 13;

/// An image picked to flash: what a plan or a table row says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub name: String,
    pub format: String,
    /// Where the bytes are (path, file://, http(s)://, oras://).
    pub url: String,
    /// Pinned sha256, when known.
    pub sha256: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Catalog,
    Image,
    Disk,
    Confirm,
    Flash,
    Done,
}

impl Step {
    fn index(self) -> usize {
        self as usize
    }
}

/// Everything the wizard knows so far.
struct Wizard {
    screen: Screen,
    image_root: PathBuf,
    mac: Option<String>,
    catalog_src: Option<String>,
    catalog: Option<Catalog>,
    images: Vec<ImageEntry>,
    image_pager: Pager,
    disk_pager: Pager,
    /// Problems of the last image listing (shown on the image step).
    notes: Vec<String>,
    image: Option<Choice>,
    disks: Vec<Disk>,
    disk: Option<Disk>,
    plan: Option<Plan>,
    /// A message for the next screen: the answer to the last input.
    message: Option<String>,
    /// What the last flash did (for the Done screen).
    result: Option<String>,
}

/// What a step decided.
enum Next {
    Go(Step),
    Exit(ExitCode),
}

/// Runs the wizard. `catalog` overrides `--catalog` (server-driven mode passes the server's);
/// `preselect` starts at the disk step with that image (after a failed unattended flash).
pub fn run(
    args: &WizardArgs,
    catalog: Option<String>,
    preselect: Option<Choice>,
) -> crate::error::Result<ExitCode> {
    let mut w = Wizard {
        screen: Screen::detect(),
        image_root: args.image_root.clone(),
        mac: args.mac.clone(),
        catalog_src: catalog.or_else(|| args.catalog.clone()),
        catalog: None,
        images: Vec::new(),
        image_pager: Pager::default(),
        disk_pager: Pager::default(),
        notes: Vec::new(),
        image: None,
        disks: Vec::new(),
        disk: None,
        plan: None,
        message: None,
        result: None,
    };
    let mut step = Step::Catalog;
    if let Some(src) = w.catalog_src.clone() {
        match w.load_catalog(&src) {
            Ok(()) => step = Step::Image,
            Err(e) => w.message = Some(e),
        }
    } else {
        w.list_images();
        if !w.images.is_empty() {
            step = Step::Image;
        }
    }
    if let Some(choice) = preselect {
        w.message = Some(format!(
            "the unattended flash of {} failed (see above and the server); pick a disk to try again, or b to pick another image",
            choice.name
        ));
        w.image = Some(choice);
        step = Step::Disk;
    }
    loop {
        let next = match step {
            Step::Catalog => w.catalog_step(),
            Step::Image => w.image_step(),
            Step::Disk => w.disk_step(),
            Step::Confirm => w.confirm_step(),
            Step::Flash => w.flash_step(),
            Step::Done => w.done_step(),
        };
        match next {
            Next::Go(s) => step = s,
            Next::Exit(code) => return Ok(code),
        }
    }
}

impl Wizard {
    /// The header every step starts with, then the step's body and the pending message.
    fn draw(&mut self, step: Step, body: &str) {
        let s = &self.screen;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "{}  {}",
            s.bold(&format!("bty {}", crate::VERSION)),
            s.breadcrumb(step.index())
        );
        let mut line = format!("image root {}", self.image_root.display());
        if let Some(mac) = &self.mac {
            let _ = write!(line, " | MAC {mac}");
        }
        let _ = writeln!(t, "{line}");
        let _ = writeln!(
            t,
            "catalog    {}",
            self.catalog_src
                .as_deref()
                .map_or("none (local images only)".to_string(), |c| fit(c, 66))
        );
        if step.index() > Step::Image.index() {
            if let Some(img) = &self.image {
                let _ = writeln!(t, "image      {}", fit(&img.name, 66));
            }
        }
        if step.index() > Step::Disk.index() {
            if let Some(d) = &self.disk {
                let _ =
                    writeln!(t, "disk       {} ({})", d.inventory.path, units::bytes(d.size_bytes));
            }
        }
        let _ = writeln!(t, "{}", "-".repeat(78));
        t.push_str(body);
        if let Some(m) = self.message.take() {
            let _ = writeln!(t, "\n{}", s.problem(&m));
        }
        s.show(&t);
    }

    /// Asks, treating end of input as quitting.
    fn ask(&self, prompt: &str) -> Option<String> {
        self.screen.ask(prompt)
    }

    fn load_catalog(&mut self, src: &str) -> Result<(), String> {
        let src = catalog_source(src);
        match catalog::load_source(&src, &catalog::fetch_remote) {
            Ok(c) => {
                self.catalog_src = Some(src);
                self.catalog = Some(c);
                self.list_images();
                Ok(())
            }
            Err(e) => Err(format!("loading the catalog {src}: {e}")),
        }
    }

    fn list_images(&mut self) {
        self.notes.clear();
        let local = match images::list_images(&self.image_root) {
            Ok(l) => {
                self.notes.extend(l.warnings);
                l.images
            }
            Err(e) if e.io_kind() == Some(std::io::ErrorKind::NotFound) => Vec::new(),
            Err(e) => {
                self.notes.push(e.to_string());
                Vec::new()
            }
        };
        self.images = images::merge(&local, self.catalog.as_ref());
    }

    fn catalog_step(&mut self) -> Next {
        let body = format!(
            "Where should images come from?\n\n  [d] default catalog ({})\n  [c] custom source: a path, http(s):// or oras:// URL, or a bty-web server\n  [l] local image root only\n  [q] quit\n",
            fit(DEFAULT_CATALOG, 56)
        );
        self.draw(Step::Catalog, &body);
        let Some(line) = self.ask("\nChoice [d/c/l/q]: ") else { return quit() };
        match parse_input(&line) {
            Input::Key('d') => match self.load_catalog(DEFAULT_CATALOG) {
                Ok(()) => Next::Go(Step::Image),
                Err(e) => {
                    self.message = Some(e);
                    Next::Go(Step::Catalog)
                }
            },
            Input::Key('c') => {
                let Some(src) = self.ask("Catalog source (Enter to go back): ") else {
                    return quit();
                };
                if src.is_empty() {
                    return Next::Go(Step::Catalog);
                }
                match self.load_catalog(&src) {
                    Ok(()) => Next::Go(Step::Image),
                    Err(e) => {
                        self.message = Some(e);
                        Next::Go(Step::Catalog)
                    }
                }
            }
            Input::Key('l') => {
                self.catalog = None;
                self.catalog_src = None;
                self.list_images();
                Next::Go(Step::Image)
            }
            Input::Key('q') => quit(),
            other => {
                self.message = Some(bad_key(&other, "d, c, l or q", 0));
                Next::Go(Step::Catalog)
            }
        }
    }

    fn image_step(&mut self) -> Next {
        let texts: Vec<String> = self
            .images
            .iter()
            .map(|e| format!("{} {} {}", e.name, e.format, e.arch.as_deref().unwrap_or("")))
            .collect();
        let matching = self.image_pager.matching(texts.iter().map(String::as_str));
        let heights = vec![1; matching.len()];
        let budget = pager::budget(self.screen.rows(), IMAGE_STEP_LINES + self.notes.len());
        let page = self.image_pager.window(&heights, budget);
        let mut body = String::new();
        if self.images.is_empty() {
            let _ = writeln!(
                body,
                "No images: the image root {} holds none{}.\n\n  [r] refresh  [b] back to the catalog choice  [q] quit",
                self.image_root.display(),
                if self.catalog.is_some() {
                    " and the catalog lists none"
                } else {
                    " and no catalog is loaded"
                }
            );
        } else {
            let _ = writeln!(body, "Pick an image:");
            let _ = writeln!(
                body,
                "  {:>3}  {:<34} {:<8} {:<7} {:>9}  where",
                "#", "name", "format", "arch", "size"
            );
            for pos in page.clone() {
                let e = &self.images[matching[pos]];
                let size = e.virtual_size.or(e.size_bytes).map_or("?".to_string(), units::bytes);
                let place = match e.origin {
                    Origin::Local => "local",
                    Origin::Catalog => "remote",
                };
                let _ = writeln!(
                    body,
                    "  {:>3}  {:<34} {:<8} {:<7} {:>9}  {place}",
                    pos + 1,
                    fit(&e.name, 34),
                    fit(&e.format, 8),
                    e.arch.as_deref().unwrap_or("-"),
                    size
                );
            }
            let footer =
                self.image_pager.footer(&page, matching.len(), self.images.len(), &heights, budget);
            let _ = writeln!(body, "  {}", fit(&footer, 76));
            let _ =
                writeln!(body, "  number: pick  /text: filter  [r] refresh  [b] back  [q] quit");
        }
        for n in &self.notes {
            let _ = writeln!(body, "  {}", self.screen.dim(&fit(&format!("note: {n}"), 76)));
        }
        self.draw(Step::Image, &body);
        let Some(line) = self.ask("\nImage: ") else { return quit() };
        if !self.images.is_empty()
            && turned(&mut self.image_pager, &line, &heights, budget, &mut self.message)
        {
            return Next::Go(Step::Image);
        }
        let shown = matching.len();
        match parse_input(&line) {
            Input::Row(n) if (1..=shown).contains(&n) => {
                let e = &self.images[matching[n - 1]];
                self.image = Some(Choice {
                    name: e.name.clone(),
                    format: e.format.clone(),
                    url: e.url.clone(),
                    sha256: e.sha256.clone(),
                });
                Next::Go(Step::Disk)
            }
            Input::Row(n) if self.images.is_empty() => {
                self.message = Some(format!(
                    "there is no image {n}: the list is empty (r refreshes, b picks a catalog)"
                ));
                Next::Go(Step::Image)
            }
            Input::Row(n) if shown == 0 => {
                self.message = Some(format!(
                    "there is no image {n}: none matches {:?} (/ alone clears the filter)",
                    self.image_pager.filter()
                ));
                Next::Go(Step::Image)
            }
            Input::Row(n) => {
                self.message =
                    Some(format!("there is no image {n}: pick a number from 1 to {shown}"));
                Next::Go(Step::Image)
            }
            Input::Key('r') => {
                if let Some(src) = self.catalog_src.clone() {
                    if let Err(e) = self.load_catalog(&src) {
                        self.message = Some(e);
                    }
                } else {
                    self.list_images();
                }
                Next::Go(Step::Image)
            }
            Input::Key('b') => Next::Go(Step::Catalog),
            Input::Key('q') => quit(),
            other => {
                self.message = Some(bad_key(&other, "r, b or q", shown));
                Next::Go(Step::Image)
            }
        }
    }

    fn disk_step(&mut self) -> Next {
        // Re-scanned on every visit: a stick plugged in or a disk unmounted since shows up.
        self.disks = match disks::list(&disks::ListOptions { all: false }) {
            Ok(d) => d,
            Err(e) => {
                self.message = Some(format!("listing the disks: {e}"));
                Vec::new()
            }
        };
        let texts: Vec<String> = self
            .disks
            .iter()
            .map(|d| {
                let inv = &d.inventory;
                [Some(&inv.path), inv.model.as_ref(), inv.serial.as_ref(), inv.tran.as_ref()]
                    .into_iter()
                    .flatten()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        let matching = self.disk_pager.matching(texts.iter().map(String::as_str));
        // A refused disk takes its reason's lines too.
        let reasons: Vec<Vec<String>> = self
            .disks
            .iter()
            .map(|d| {
                d.refusal.as_ref().map_or(Vec::new(), |r| wrap(&format!("not writable: {r}"), 66))
            })
            .collect();
        let heights: Vec<usize> = matching.iter().map(|&i| 1 + reasons[i].len()).collect();
        let budget = pager::budget(self.screen.rows(), DISK_STEP_LINES);
        let page = self.disk_pager.window(&heights, budget);
        let mut body = String::new();
        if self.disks.is_empty() {
            let _ = writeln!(body, "No disks found.\n\n  [r] rescan  [b] back  [q] quit");
        } else {
            let _ = writeln!(body, "Pick the disk to overwrite:");
            let _ = writeln!(
                body,
                "  {:>3}  {:<14} {:>9}  {:<21} {:<6} serial",
                "#", "path", "size", "model", "tran"
            );
            for pos in page.clone() {
                let d = &self.disks[matching[pos]];
                let inv = &d.inventory;
                let row = format!(
                    "  {:>3}  {:<14} {:>9}  {:<21} {:<6} {}",
                    pos + 1,
                    fit(&inv.path, 14),
                    units::bytes(d.size_bytes),
                    fit(inv.model.as_deref().unwrap_or("-"), 21),
                    fit(inv.tran.as_deref().unwrap_or("-"), 6),
                    fit(inv.serial.as_deref().unwrap_or("-"), 20)
                );
                if d.refusal.is_none() {
                    let _ = writeln!(body, "{row}");
                    continue;
                }
                let _ = writeln!(body, "{}", self.screen.dim(&row));
                // The whole reason, wrapped: it names the mount point or holder the operator
                // has to deal with.
                for (i, l) in reasons[matching[pos]].iter().enumerate() {
                    let lead = if i == 0 { "         - " } else { "           " };
                    let _ = writeln!(body, "{}", self.screen.dim(&format!("{lead}{l}")));
                }
            }
            let footer =
                self.disk_pager.footer(&page, matching.len(), self.disks.len(), &heights, budget);
            let _ = writeln!(body, "  {}", fit(&footer, 76));
            let _ = writeln!(body, "  number: pick  /text: filter  [r] rescan  [b] back  [q] quit");
        }
        self.draw(Step::Disk, &body);
        let Some(line) = self.ask("\nDisk: ") else { return quit() };
        if !self.disks.is_empty()
            && turned(&mut self.disk_pager, &line, &heights, budget, &mut self.message)
        {
            return Next::Go(Step::Disk);
        }
        let shown = matching.len();
        match parse_input(&line) {
            Input::Row(n) if (1..=shown).contains(&n) => {
                let d = &self.disks[matching[n - 1]];
                if let Some(r) = &d.refusal {
                    self.message =
                        Some(format!("disk {n} ({}) cannot be written: {r}", d.inventory.path));
                    return Next::Go(Step::Disk);
                }
                self.disk = Some(d.clone());
                Next::Go(Step::Confirm)
            }
            Input::Row(n) if self.disks.is_empty() => {
                self.message =
                    Some(format!("there is no disk {n}: no disks were found (r rescans)"));
                Next::Go(Step::Disk)
            }
            Input::Row(n) if shown == 0 => {
                self.message = Some(format!(
                    "there is no disk {n}: none matches {:?} (/ alone clears the filter)",
                    self.disk_pager.filter()
                ));
                Next::Go(Step::Disk)
            }
            Input::Row(n) => {
                self.message =
                    Some(format!("there is no disk {n}: pick a number from 1 to {shown}"));
                Next::Go(Step::Disk)
            }
            Input::Key('r') => Next::Go(Step::Disk),
            Input::Key('b') => Next::Go(Step::Image),
            Input::Key('q') => quit(),
            other => {
                self.message = Some(bad_key(&other, "r, b or q", shown));
                Next::Go(Step::Disk)
            }
        }
    }

    fn confirm_step(&mut self) -> Next {
        let (Some(img), Some(disk)) = (self.image.clone(), self.disk.clone()) else {
            return Next::Go(Step::Image);
        };
        if self.plan.is_none() {
            let target = PathBuf::from(&disk.inventory.path);
            match Plan::new(&img.url, &target) {
                Ok(p) => self.plan = Some(p),
                Err(e) => {
                    self.message = Some(format!("the plan is refused: {e}"));
                    return Next::Go(Step::Disk);
                }
            }
        }
        let Some(plan) = &self.plan else { return Next::Go(Step::Disk) };
        let mut body = String::new();
        let _ = writeln!(body, "About to flash:\n");
        let _ = writeln!(body, "  image         {}", fit(&img.name, 62));
        let _ = writeln!(body, "  from          {}", fit(&plan.source.display, 62));
        let _ = writeln!(body, "  format        {}", plan.image.format);
        let _ = writeln!(
            body,
            "  on-disk size  {}",
            plan.image.virtual_size.map_or("unknown until decoded".to_string(), |n| format!(
                "{} ({n} bytes)",
                units::bytes(n)
            ))
        );
        let pin = match (&img.sha256, plan.source.digest()) {
            (Some(s), _) => format!("sha256 {}", fit(s, 64)),
            (None, Some(d)) => format!("sha256 {} (the OCI layer digest)", crate::hex::encode(&d)),
            (None, None) => "none: the bytes are not checked against a known digest".into(),
        };
        let _ = writeln!(body, "  digest pin    {pin}");
        let _ = writeln!(body, "  target        {}", fit(&describe_disk(&disk), 62));
        let _ = writeln!(body, "  destroys      {}", fit(&destroyed(&disk), 62));
        let _ = writeln!(body, "\n  Type yes to flash, b to go back, q to quit.");
        self.draw(Step::Confirm, &body);
        let Some(line) = self.ask("\nFlash? ") else { return quit() };
        match line.trim() {
            "yes" => Next::Go(Step::Flash),
            "b" | "B" => {
                self.plan = None;
                Next::Go(Step::Disk)
            }
            "q" | "Q" => quit(),
            "y" | "Y" | "YES" | "Yes" => {
                self.message = Some("type the whole word yes (lower case) to flash".into());
                Next::Go(Step::Confirm)
            }
            other => {
                self.message = Some(format!(
                    "{other:?} is not an answer here: type yes to flash, b to go back or q to quit"
                ));
                Next::Go(Step::Confirm)
            }
        }
    }

    fn flash_step(&mut self) -> Next {
        let Some(plan) = self.plan.take() else { return Next::Go(Step::Disk) };
        let Some(img) = self.image.clone() else { return Next::Go(Step::Image) };
        let sha256 = match img.sha256.as_deref().filter(|s| !s.is_empty()).map(flash::parse_sha256)
        {
            Some(Ok(s)) => Some(s),
            Some(Err(e)) => {
                self.message = Some(format!("the image's sha256 is unusable: {e}"));
                return Next::Go(Step::Disk);
            }
            None => None,
        };
        let target = plan.target.resolved.display().to_string();
        self.draw(
            Step::Flash,
            &format!("Flashing {} onto {target}. Ctrl+C cancels.\n\n", img.name),
        );
        crate::sys::reset_cancel();
        if let Err(e) = crate::sys::catch_cancel_signals() {
            self.message = Some(format!("installing the Ctrl+C handler: {e}; not flashing"));
            return Next::Go(Step::Disk);
        }
        // Keys typed during the flash would scribble over the progress bar; they are dropped.
        let quiet = crate::sys::QuietTerminal::new(0).ok();
        let mut reporter = Reporter::new(Mode::Auto);
        let opts = Options { sha256, verify: false, zero_skip: true };
        let outcome =
            flash::run(&plan, &opts, &mut |s| reporter.update(s), crate::sys::cancel_flag());
        drop(quiet);
        if let Err(e) = crate::sys::default_cancel_signals() {
            crate::warn!("restoring Ctrl+C: {e}");
        }
        match outcome {
            Ok(report) => {
                reporter.finish(&target, &report);
                crate::cli::agent::register_uefi_boot(&plan.target.resolved, &img.name);
                self.result = Some(format!(
                    "Wrote {} ({}) to {target} in {}.",
                    img.name,
                    units::bytes(report.image_bytes),
                    units::duration(std::time::Duration::from_secs_f64(report.seconds))
                ));
                Next::Go(Step::Done)
            }
            Err(e) => {
                reporter.fail(&e.to_string());
                self.message = Some(match e {
                    FlashError::Cancelled => format!(
                        "flash cancelled: {target}'s first and last MiB were blanked; it holds no usable image"
                    ),
                    FlashError::Refused(e) => format!("flash refused, nothing written: {e}"),
                    FlashError::Failed(e) => {
                        format!("flash failed: {e}; {target}'s first and last MiB were blanked")
                    }
                });
                Next::Go(Step::Disk)
            }
        }
    }

    fn done_step(&mut self) -> Next {
        // Enter reboots only where bty is the machine's workload (its live environment); on a
        // workstation a flash is one job among others, and Enter leaves the wizard.
        let live = crate::cli::power::is_live_environment();
        let (reboot, exit, enter) = if live {
            (" (default)", "", "Enter reboots")
        } else {
            ("", " (default)", "Enter exits")
        };
        let mut body = String::new();
        let _ = writeln!(body, "{}\n", self.result.as_deref().unwrap_or("Done."));
        let _ = writeln!(
            body,
            "  [r] reboot{reboot}\n  [p] power off\n  [s] exit to the shell{exit}\n  [a] flash another disk"
        );
        self.draw(Step::Done, &body);
        let Some(line) = self.ask("\nNext [r/p/s/a]: ") else { return quit() };
        let action = match parse_input(&line) {
            Input::Empty if live => PowerAction::Reboot,
            Input::Key('r') => PowerAction::Reboot,
            Input::Key('p') => PowerAction::PowerOff,
            Input::Empty | Input::Key('s') => return Next::Exit(ExitCode::SUCCESS),
            Input::Key('a') => {
                self.disk = None;
                return Next::Go(Step::Disk);
            }
            other => {
                self.message = Some(bad_key(&other, &format!("r, p, s or a ({enter})"), 0));
                return Next::Go(Step::Done);
            }
        };
        match crate::cli::power::power(action) {
            Ok(code) => Next::Exit(code),
            Err(e) => {
                self.message = Some(e.to_string());
                Next::Go(Step::Done)
            }
        }
    }
}

/// Whether `line` was for the pager (a page turn or a filter); a refused one leaves its reason
/// in `message`.
fn turned(
    pager: &mut Pager,
    line: &str,
    heights: &[usize],
    budget: usize,
    message: &mut Option<String>,
) -> bool {
    match pager.answer(line, heights, budget) {
        None => false,
        Some(Move::Done) => true,
        Some(Move::Refused(why)) => {
            *message = Some(why);
            true
        }
    }
}

fn quit() -> Next {
    eprintln!("bty: wizard closed; nothing more was written");
    Next::Exit(ExitCode::SUCCESS)
}

/// The message for an answer that is not a valid key on a menu with `rows` numbered rows.
fn bad_key(input: &Input, keys: &str, rows: usize) -> String {
    let what = match input {
        Input::Empty => "nothing was typed".to_string(),
        Input::Key(c) => format!("unknown key {c:?}"),
        Input::Other(s) => format!("{:?} is not a choice", fit(s, 20)),
        Input::Row(n) => format!("there is no entry {n}"),
    };
    if rows > 0 {
        format!("{what}: type a number from 1 to {rows}, or {keys}")
    } else {
        format!("{what}: type {keys}")
    }
}

/// A catalog source as typed: a bty-web address without a path means its /catalog.toml.
fn catalog_source(src: &str) -> String {
    let src = src.trim();
    if let Some(rest) = src.strip_prefix("http://").or_else(|| src.strip_prefix("https://")) {
        if !rest.trim_end_matches('/').contains('/') {
            return format!("{}/catalog.toml", src.trim_end_matches('/'));
        }
    }
    src.to_string()
}

/// The disk as the operator picked it from the table: path, size, model, serial, transport.
fn describe_disk(d: &Disk) -> String {
    let inv = &d.inventory;
    let mut s = format!("{} ({}", inv.path, units::bytes(d.size_bytes));
    for extra in [&inv.model, &inv.serial, &inv.tran].into_iter().flatten() {
        let _ = write!(s, ", {extra}");
    }
    s.push(')');
    s
}

/// Splits `text` into lines of at most `width` characters at spaces (a longer word gets a
/// line of its own).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in text.split(' ') {
        if !cur.is_empty() && cur.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

/// What flashing `disk` destroys: its partitions as sysfs lists them, or its whole content.
fn destroyed(disk: &Disk) -> String {
    let dir = std::path::Path::new("/sys/block").join(&disk.name);
    let mut parts: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().join("partition").exists())
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let size = std::fs::read_to_string(e.path().join("size"))
                        .ok()
                        .and_then(|s| s.trim().parse::<u64>().ok())
                        .map_or(String::new(), |n| format!(" {}", units::bytes(n * 512)));
                    format!("{name}{size}")
                })
                .collect()
        })
        .unwrap_or_default();
    parts.sort();
    let all = format!("everything on {} ({})", disk.inventory.path, units::bytes(disk.size_bytes));
    if parts.is_empty() { all } else { format!("{all}: partitions {}", parts.join(", ")) }
}

#[cfg(test)]
mod tests {
    use super::screen::STEPS;
    use super::*;

    #[test]
    fn bare_servers_mean_their_catalog() {
        assert_eq!(catalog_source("http://lab:8080"), "http://lab:8080/catalog.toml");
        assert_eq!(catalog_source("http://lab:8080/"), "http://lab:8080/catalog.toml");
        assert_eq!(catalog_source("https://h/x/Cat.toml"), "https://h/x/Cat.toml");
        assert_eq!(catalog_source("/srv/My.toml"), "/srv/My.toml");
        assert_eq!(catalog_source("oras://h/o/r:t"), "oras://h/o/r:t");
    }

    #[test]
    fn bad_keys_name_the_input_and_the_choices() {
        assert_eq!(
            bad_key(&Input::Key('x'), "r, b or q", 3),
            "unknown key 'x': type a number from 1 to 3, or r, b or q"
        );
        assert_eq!(
            bad_key(&Input::Empty, "d, c, l or q", 0),
            "nothing was typed: type d, c, l or q"
        );
    }

    #[test]
    fn wrap_breaks_at_spaces() {
        assert_eq!(wrap("aa bb cc", 5), ["aa bb", "cc"]);
        assert_eq!(wrap("a verylongword b", 4), ["a", "verylongword", "b"]);
    }

    #[test]
    fn steps_and_breadcrumb_agree() {
        assert_eq!(STEPS[Step::Confirm.index()], "Confirm");
        assert_eq!(STEPS[Step::Done.index()], "Done");
    }
}
