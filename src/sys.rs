//! Every libc call and every `unsafe` block of the crate, each behind a small safe function.
//!
//! Callers add context to the `io::Error`s returned here; this module never formats user messages.
#![allow(unsafe_code)]

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Error numbers callers branch on (so no other module names libc).
pub use libc::{EBUSY, EINVAL, EIO, ENOSPC, ENOSYS, ENOTTY, EOPNOTSUPP, EROFS};

/// Alignment of every I/O buffer: covers 512- and 4096-byte logical blocks and the page size.
pub const IO_ALIGN: usize = 4096;

// ioctl request numbers from <linux/fs.h>.
const BLKROGET: u64 = 0x125e; // _IO(0x12, 94)
const BLKRRPART: u64 = 0x125f; // _IO(0x12, 95)
const BLKSSZGET: u64 = 0x1268; // _IO(0x12, 104)
const BLKZEROOUT: u64 = 0x127f; // _IO(0x12, 127)
const BLKGETSIZE64: u64 = 0x8008_1272; // _IOR(0x12, 114, size_t)

/// A zero-initialised heap buffer aligned to `IO_ALIGN`, as O_DIRECT requires.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively (like Vec<u8>), so moving it to another
// thread moves that ownership; there is no shared interior state.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` zeroed bytes (`len` > 0) aligned to `IO_ALIGN`.
    pub fn new(len: usize) -> AlignedBuf {
        let layout = Self::layout(len);
        // SAFETY: layout has a non-zero size (checked in layout()) and a valid power-of-two alignment.
        let raw = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else { std::alloc::handle_alloc_error(layout) };
        AlignedBuf { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        // Invariant, not input: callers pass constant, non-zero sizes.
        Layout::from_size_align(len.max(1), IO_ALIGN).expect("buffer size fits in isize")
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr points to `len` initialised (zeroed at allocation) bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: ptr came from alloc_zeroed with exactly this layout and is freed once.
        unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

/// Opens `path` for writing with O_DIRECT; `exclusive` adds O_EXCL, which for a block device
/// makes the kernel refuse (EBUSY) when the device is mounted or claimed by md/dm, and keeps
/// others from claiming it while we hold the fd.
pub fn open_direct(path: &Path, exclusive: bool, create: bool) -> io::Result<File> {
    let mut flags = libc::O_DIRECT | libc::O_CLOEXEC;
    if exclusive {
        flags |= libc::O_EXCL;
    }
    OpenOptions::new().read(true).write(true).create(create).custom_flags(flags).open(path)
}

/// Opens `path` for buffered read+write; `exclusive` as in `open_direct`.
pub fn open_buffered(path: &Path, exclusive: bool, create: bool) -> io::Result<File> {
    let mut flags = libc::O_CLOEXEC;
    if exclusive {
        flags |= libc::O_EXCL;
    }
    OpenOptions::new().read(true).write(true).create(create).custom_flags(flags).open(path)
}

/// Turns O_DIRECT on or off for an open file (the unaligned tail of an image is written buffered).
pub fn set_direct(file: &File, on: bool) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a valid, owned fd take and return plain integers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let new = if on { flags | libc::O_DIRECT } else { flags & !libc::O_DIRECT };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, new) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Size in bytes of a block device.
pub fn block_device_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points to a live u64.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(size) }
}

/// Logical block size of a block device (the unit of O_DIRECT alignment).
pub fn logical_block_size(file: &File) -> io::Result<u32> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points to a live c_int.
    let rc =
        unsafe { libc::ioctl(file.as_raw_fd(), BLKSSZGET as _, &mut size as *mut libc::c_int) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(size.max(512) as u32) }
}

/// Whether the block device is read-only (BLKROGET).
pub fn block_device_read_only(file: &File) -> io::Result<bool> {
    let mut ro: libc::c_int = 0;
    // SAFETY: BLKROGET writes one int through the pointer, which points to a live c_int.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKROGET as _, &mut ro as *mut libc::c_int) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(ro != 0) }
}

/// Asks the device to zero `[offset, offset + len)` (BLKZEROOUT); both must be sector-aligned.
/// The kernel guarantees the range reads back as zeros afterwards.
pub fn zero_out(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let range: [u64; 2] = [offset, len];
    // SAFETY: BLKZEROOUT reads two u64 (start, length) through the pointer to a live array.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKZEROOUT as _, range.as_ptr()) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Asks the kernel to re-read the partition table of a whole-disk block device.
pub fn reread_partitions(file: &File) -> io::Result<()> {
    // SAFETY: BLKRRPART takes no argument.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKRRPART as _) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Opens a device read-only to query it (ioctls such as SG_IO). O_NONBLOCK keeps the open from
/// waiting on a removable drive with no medium.
pub fn open_for_query(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC).open(path)
}

// SG_IO from <scsi/sg.h>; the header struct is not in the libc crate.
const SG_IO: u64 = 0x2285;
const SG_DXFER_FROM_DEV: libc::c_int = -3;
const SG_INFO_OK_MASK: libc::c_uint = 0x1;
const SCSI_INQUIRY: u8 = 0x12;
/// How long the kernel waits for the device to answer, in milliseconds: long enough for a
/// sleepy USB bridge, short enough that a dead one does not stall an inventory.
const SG_TIMEOUT_MS: libc::c_uint = 3000;

/// `struct sg_io_hdr` (the SG v3 interface) from <scsi/sg.h>.
#[repr(C)]
struct SgIoHdr {
    interface_id: libc::c_int,
    dxfer_direction: libc::c_int,
    cmd_len: libc::c_uchar,
    mx_sb_len: libc::c_uchar,
    iovec_count: libc::c_ushort,
    dxfer_len: libc::c_uint,
    dxferp: *mut libc::c_void,
    cmdp: *mut libc::c_uchar,
    sbp: *mut libc::c_uchar,
    timeout: libc::c_uint,
    flags: libc::c_uint,
    pack_id: libc::c_int,
    usr_ptr: *mut libc::c_void,
    status: libc::c_uchar,
    masked_status: libc::c_uchar,
    msg_status: libc::c_uchar,
    sb_len_wr: libc::c_uchar,
    host_status: libc::c_ushort,
    driver_status: libc::c_ushort,
    resid: libc::c_int,
    duration: libc::c_uint,
    info: libc::c_uint,
}

/// Sends a SCSI INQUIRY for vital product data page `page` (EVPD set) through SG_IO and returns
/// the bytes the device sent back (at most 255).
pub fn scsi_inquiry_vpd(file: &File, page: u8) -> io::Result<Vec<u8>> {
    const ALLOC: usize = 255;
    let mut data = vec![0u8; ALLOC];
    let mut sense = [0u8; 32];
    // INQUIRY CDB (SPC-4 6.6): EVPD=1, page code, 16-bit allocation length, control.
    let mut cdb = [SCSI_INQUIRY, 0x01, page, 0, ALLOC as u8, 0];
    let mut hdr = SgIoHdr {
        interface_id: libc::c_int::from(b'S'),
        dxfer_direction: SG_DXFER_FROM_DEV,
        cmd_len: cdb.len() as libc::c_uchar,
        mx_sb_len: sense.len() as libc::c_uchar,
        iovec_count: 0,
        dxfer_len: ALLOC as libc::c_uint,
        dxferp: data.as_mut_ptr().cast(),
        cmdp: cdb.as_mut_ptr(),
        sbp: sense.as_mut_ptr(),
        timeout: SG_TIMEOUT_MS,
        flags: 0,
        pack_id: 0,
        usr_ptr: std::ptr::null_mut(),
        status: 0,
        masked_status: 0,
        msg_status: 0,
        sb_len_wr: 0,
        host_status: 0,
        driver_status: 0,
        resid: 0,
        duration: 0,
        info: 0,
    };
    // SAFETY: SG_IO reads the header and the CDB, writes at most dxfer_len bytes to dxferp and
    // mx_sb_len bytes to sbp; all three point to live buffers of those sizes that outlive the
    // call, which is synchronous.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), SG_IO as _, &mut hdr as *mut SgIoHdr) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if hdr.info & SG_INFO_OK_MASK != 0 || hdr.status != 0 || hdr.host_status != 0 {
        return Err(io::Error::other(format!(
            "SCSI status {:#04x}, host status {:#06x}, driver status {:#06x}",
            hdr.status, hdr.host_status, hdr.driver_status
        )));
    }
    let got = ALLOC.saturating_sub(usize::try_from(hdr.resid).unwrap_or(0));
    data.truncate(got);
    Ok(data)
}

/// Sends SIGKILL to every process of the process group `pgid`: a child started as the leader
/// of its own group, and whatever it started in turn.
pub fn kill_process_group(pgid: u32) -> io::Result<()> {
    // 0 and 1 would address our own group and init: never what a caller means.
    let pgid = match libc::pid_t::try_from(pgid) {
        Ok(p) if p > 1 => p,
        _ => return Err(io::Error::from(io::ErrorKind::InvalidInput)),
    };
    // SAFETY: kill takes integers only; a negative pid addresses the process group.
    let rc = unsafe { libc::kill(-pgid, libc::SIGKILL) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Lowers the calling thread's scheduling priority to nice `nice` (Linux keeps a nice value per
/// thread): for a thread that only moves bulk data, so that the threads answering small,
/// latency-bound requests run first when the cores are busy. Raising a nice value needs no
/// privilege; lowering it back would, so a caller does this only on a thread that stays bulk
/// until it ends.
pub fn deprioritize_this_thread(nice: i32) -> io::Result<()> {
    // SAFETY: gettid takes nothing and cannot fail; setpriority reads its three integer
    // arguments only, and PRIO_PROCESS with a thread id applies to that one thread.
    let r = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// The effective user id: root decides between the Quadlet and the compose deploy.
pub fn euid() -> u32 {
    // SAFETY: geteuid takes nothing, touches no memory of ours and cannot fail.
    unsafe { libc::geteuid() }
}

/// Sends up to `count` bytes of `file` from `*offset` on the socket with sendfile(2), from the
/// page cache without a copy through user space, and advances `*offset` past what was sent.
/// Ok(0) means the file ends at `*offset`. A blocking socket's SO_SNDTIMEO bounds the wait: a
/// peer that reads nothing for that long makes it fail with EAGAIN (`WouldBlock`).
pub fn sendfile(
    out: &std::net::TcpStream,
    file: &File,
    offset: &mut u64,
    count: usize,
) -> io::Result<usize> {
    let mut off = libc::off_t::try_from(*offset)
        .map_err(|_| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    // SAFETY: both descriptors are borrowed from live objects, so they stay open for the call;
    // the kernel reads and updates only `off`, a live off_t of ours, and touches no other memory
    // of this process (the bytes go from the file's pages to the socket inside the kernel).
    let n = unsafe { libc::sendfile(out.as_raw_fd(), file.as_raw_fd(), &mut off, count) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    *offset = u64::try_from(off).unwrap_or(*offset);
    Ok(n.unsigned_abs())
}

/// Shuts a listening socket down so that a thread blocked in `accept` on it returns (with
/// EINVAL on Linux): how a server stops accepting without a self-connection or a poll loop.
pub fn shutdown_listener(listener: &std::net::TcpListener) -> io::Result<()> {
    // SAFETY: shutdown on a borrowed, open socket fd; no memory is passed.
    let rc = unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// A TCP connection from a chosen local IPv4 address (any port) to `remote`: how a loopback
/// test stands in for a second client host (127.0.0.2) without a network namespace.
pub fn connect_from(
    local: std::net::Ipv4Addr,
    remote: std::net::SocketAddrV4,
) -> io::Result<std::net::TcpStream> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let addr = |a: std::net::SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: socket takes no pointers; the fd it returns is owned by `fd` from here on, so
    // every early return closes it.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new, open fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let from = addr(std::net::SocketAddrV4::new(local, 0));
    // SAFETY: bind reads `len` bytes of a live sockaddr_in on our stack.
    if unsafe { libc::bind(fd.as_raw_fd(), (&raw const from).cast(), len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let to = addr(remote);
    // SAFETY: connect reads `len` bytes of a live sockaddr_in on our stack.
    if unsafe { libc::connect(fd.as_raw_fd(), (&raw const to).cast(), len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(std::net::TcpStream::from(fd))
}

/// Raises this process's open-file limit (soft, and hard when allowed) to at least `want`;
/// returns the soft limit now in force. Children started afterwards inherit it.
pub fn raise_open_files(want: u64) -> io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the live struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur >= want {
        return Ok(lim.rlim_cur);
    }
    let raised = libc::rlimit { rlim_cur: want, rlim_max: lim.rlim_max.max(want) };
    // SAFETY: setrlimit reads one live rlimit; raising the hard limit fails without the
    // privilege, and then the soft limit goes as far as the hard one allows.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return Ok(want);
    }
    let capped = libc::rlimit { rlim_cur: lim.rlim_max.min(want), rlim_max: lim.rlim_max };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &capped) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(capped.rlim_cur)
}

/// Caps glibc's malloc arenas. By default glibc gives busy threads arenas of their own (up to
/// eight per core) and keeps freed memory in each, so a thread-per-connection server's RSS
/// grows with the number of threads that ever ran. A no-op on other C libraries (musl has no
/// per-thread arenas).
pub fn limit_malloc_arenas(n: i32) {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator tunable; called before the server's threads start.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, n);
    }
    #[cfg(not(target_env = "gnu"))]
    let _ = n;
}

/// Hands freed heap memory back to the kernel, so an idle server's RSS drops back after a burst
/// (glibc keeps it otherwise). A no-op on other C libraries.
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the allocator; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Clears the immutable attribute of a file (efivarfs marks its variables immutable so that a
/// stray `rm` cannot brick a machine; writing one first needs the flag off).
pub fn clear_immutable(file: &File) -> io::Result<()> {
    const FS_IMMUTABLE_FL: libc::c_long = 0x10;
    let mut flags: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one long through the pointer to a live local.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETFLAGS as _, &mut flags) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if flags & FS_IMMUTABLE_FL == 0 {
        return Ok(());
    }
    flags &= !FS_IMMUTABLE_FL;
    // SAFETY: FS_IOC_SETFLAGS reads one long through the pointer to a live local.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_SETFLAGS as _, &flags) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Takes an exclusive advisory lock on a file without waiting; false when another process
/// holds it. Released when the file is closed (or the process dies, even by SIGKILL).
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a borrowed, open fd; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) { Ok(false) } else { Err(e) }
}

/// Fills `buf` from the kernel's random generator with getrandom(2): no /dev/urandom needed,
/// which a from-scratch container or a chroot may not have.
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into the live slice it is given.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

/// Deallocates `[offset, offset + len)` of a regular file, keeping its size: the range then
/// reads as zeros whatever it held before.
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: fallocate on a valid fd with integer arguments; no memory is passed.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            n,
        )
    };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Drops cached pages of a file range so the next buffered read comes from the device.
pub fn drop_cache(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(n)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: posix_fadvise takes integers only; it returns the error number instead of setting errno.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), off, n, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 { Err(io::Error::from_raw_os_error(rc)) } else { Ok(()) }
}

/// Offset of the first data at or after `offset` (SEEK_DATA); None when only a hole follows.
/// Err(Unsupported) where the file system cannot tell holes from data.
pub fn seek_data(file: &File, offset: u64) -> io::Result<Option<u64>> {
    seek(file, offset, libc::SEEK_DATA).map(|r| r.ok())
}

/// Offset of the first hole at or after `offset` (SEEK_HOLE; the end of file counts as one).
pub fn seek_hole(file: &File, offset: u64) -> io::Result<u64> {
    seek(file, offset, libc::SEEK_HOLE)?.map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))
}

/// lseek with SEEK_DATA/SEEK_HOLE: Ok(Err(())) for ENXIO (nothing of that kind past offset).
fn seek(file: &File, offset: u64, whence: libc::c_int) -> io::Result<Result<u64, ()>> {
    let Ok(off) = libc::off_t::try_from(offset) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: lseek takes integers only. It moves the fd's offset, which no caller relies on:
    // every read of a source goes through pread.
    let r = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
    if r >= 0 {
        return Ok(Ok(r as u64));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENXIO) => Ok(Err(())),
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => {
            Err(io::Error::from(io::ErrorKind::Unsupported))
        }
        _ => Err(e),
    }
}

/// Available memory in bytes (MemAvailable from /proc/meminfo), when it can be read.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Total memory in bytes (MemTotal from /proc/meminfo), when it can be read.
pub fn total_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The number of rows of the terminal on `fd`, when it is one that knows its size (a serial
/// console reports 0: unknown).
pub fn terminal_rows(fd: i32) -> Option<u16> {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct we own and pass by pointer; a
    // descriptor that is not a terminal makes it fail with ENOTTY and write nothing.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws as *mut libc::winsize) };
    (rc == 0 && ws.ws_row > 0).then_some(ws.ws_row)
}

/// Whether the fd is a terminal.
pub fn isatty(fd: i32) -> bool {
    // SAFETY: isatty takes an integer and only inspects it.
    unsafe { libc::isatty(fd) == 1 }
}

static CANCELLED: AtomicBool = AtomicBool::new(false);
static CANCEL_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_cancel_signal(sig: libc::c_int) {
    // Only async-signal-safe work here: two atomic stores.
    CANCEL_SIGNAL.store(sig, Ordering::SeqCst);
    CANCELLED.store(true, Ordering::SeqCst);
}

/// Routes SIGINT and SIGTERM to a flag (`cancel_flag`) instead of killing the process, so a flash
/// can stop its threads and blank the target's headers before exiting.
pub fn catch_cancel_signals() -> io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler is an
        // extern "C" fn that only touches atomics, which is async-signal-safe.
        let rc = unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_cancel_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut())
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The flag that SIGINT/SIGTERM set once `catch_cancel_signals` ran.
pub fn cancel_flag() -> &'static AtomicBool {
    &CANCELLED
}

/// Clears the cancel flag, so a wizard can flash again after a cancelled flash.
pub fn reset_cancel() {
    CANCEL_SIGNAL.store(0, Ordering::SeqCst);
    CANCELLED.store(false, Ordering::SeqCst);
}

/// Gives SIGINT and SIGTERM back their default action (end the process): outside a flash,
/// Ctrl+C in the wizard should quit, not set a flag nobody reads.
pub fn default_cancel_signals() -> io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: SIG_DFL is a valid disposition for both signals; no handler code runs.
        if unsafe { libc::signal(sig, libc::SIG_DFL) } == libc::SIG_ERR {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A terminal whose echo and line editing are off until this is dropped (then the saved
/// settings come back). Signals (ISIG) stay on, so Ctrl+C still raises SIGINT.
pub struct QuietTerminal {
    fd: i32,
    saved: libc::termios,
}

impl QuietTerminal {
    /// Turns echo and canonical mode off on `fd`; Err when it is not a terminal.
    pub fn new(fd: i32) -> io::Result<QuietTerminal> {
        // SAFETY: a zeroed termios is a plain C struct that tcgetattr overwrites.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr writes one termios through a pointer to a live value.
        if unsafe { libc::tcgetattr(fd, &mut saved) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut quiet = saved;
        quiet.c_lflag &= !(libc::ECHO | libc::ICANON);
        // SAFETY: tcsetattr reads one termios through a pointer to a live value.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(QuietTerminal { fd, saved })
    }
}

impl Drop for QuietTerminal {
    fn drop(&mut self) {
        // SAFETY: as in new; TCSAFLUSH also drops the keys typed while quiet, so they do not
        // turn up as input to the next prompt.
        unsafe { libc::tcsetattr(self.fd, libc::TCSAFLUSH, &self.saved) };
    }
}

/// Flushes every file system's dirty data to disk.
pub fn sync_all() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() }
}

/// What to do with the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerAction {
    Reboot,
    PowerOff,
}

/// Syncs, then reboots or powers off the machine through reboot(2): no init system needed
/// (an initramfs may have none). Returns only on failure (EPERM without CAP_SYS_BOOT).
pub fn power(action: PowerAction) -> io::Error {
    sync_all();
    let cmd = match action {
        PowerAction::Reboot => libc::RB_AUTOBOOT,
        PowerAction::PowerOff => libc::RB_POWER_OFF,
    };
    // SAFETY: reboot takes an integer command; on success it does not return.
    unsafe { libc::reboot(cmd) };
    io::Error::last_os_error()
}

/// Opens the system console for writing when we may (never becoming its controlling process,
/// never blocking on a stuck serial line).
pub fn open_console() -> Option<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/console")
        .ok()
}

/// The IP addresses of this host's interfaces (loopback included), from getifaddrs(3), for
/// the DHCP cheatsheet: DHCP moves addresses, so they are read when shown, not at start.
pub fn interface_addresses() -> io::Result<Vec<std::net::IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a pointer to a list it allocates into the live local.
    if unsafe { libc::getifaddrs(&mut head) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed; ifa_addr is
        // null or points to a sockaddr whose family says which larger struct it is.
        unsafe {
            let ifa = &*cur;
            let sa = ifa.ifa_addr;
            if !sa.is_null() {
                match i32::from((*sa).sa_family) {
                    libc::AF_INET => {
                        let a = &*(sa as *const libc::sockaddr_in);
                        out.push(std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)).into());
                    }
                    libc::AF_INET6 => {
                        let a = &*(sa as *const libc::sockaddr_in6);
                        out.push(std::net::Ipv6Addr::from(a.sin6_addr.s6_addr).into());
                    }
                    _ => {}
                }
            }
            cur = ifa.ifa_next;
        }
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once, after the last use.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buf_is_aligned_and_zeroed() {
        for len in [1usize, 512, 4096, 1 << 20] {
            let b = AlignedBuf::new(len);
            assert_eq!(b.as_ptr() as usize % IO_ALIGN, 0);
            assert_eq!(b.len(), len);
            assert!(b.iter().all(|&x| x == 0));
        }
    }

    #[test]
    fn sg_io_on_a_device_without_it_is_an_error() {
        // No SCSI device on the test machines: this checks only that a device without SG_IO
        // answers with an error rather than garbage.
        let f = open_for_query(Path::new("/dev/null")).unwrap();
        let e = scsi_inquiry_vpd(&f, 0x80).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(ENOTTY), "{e}");
    }

    #[test]
    fn refuses_to_kill_our_own_group_or_init() {
        for pgid in [0, 1, u32::MAX] {
            assert_eq!(kill_process_group(pgid).unwrap_err().kind(), io::ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn interface_addresses_include_loopback() {
        let all = interface_addresses().unwrap();
        assert!(all.contains(&std::net::Ipv4Addr::LOCALHOST.into()), "{all:?}");
    }
}
