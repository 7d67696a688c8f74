// Atomic file replacement: the bytes go to a temporary file beside the target, which is flushed
// to disk (fsync), renamed over the target, and the directory is flushed so the rename itself
// survives a crash. A reader sees either the old file or the new one, never a half-written file;
// a failure before the rename leaves the old file as it was and removes the temporary.
// A symbolic link at the target is followed (the file it names is replaced, the link stays);
// an existing target's permission bits are kept.
// Not here: locking against concurrent writers (the last rename wins), Windows.

import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

public enum AtomicFile {
    /// Replaces the file at `path` with `data`, atomically and durably.
    /// Throws `EspalierError.data(file: path, …)` saying what went wrong and what to do.
    public static func write(_ data: Data, to path: String) throws {
        guard !path.isEmpty else {
            throw EspalierError.data(file: "<empty path>", problem: "cannot write to an empty path; pass a file name")
        }
        let target = resolveSymlink(path)
        let directory = directoryOf(target)
        let base = (target as NSString).lastPathComponent

        // The target's current mode, if any, so replacing a file does not change its permissions.
        var st = stat()
        let existingMode: mode_t? = stat(target, &st) == 0 ? st.st_mode : nil
        if let m = existingMode, (m & S_IFMT) == S_IFDIR {
            throw EspalierError.data(file: path, problem: "is a directory, not a file; choose a file name inside it")
        }

        let temporary = (directory as NSString).appendingPathComponent(
            ".\(base).tmp-\(getpid())-\(UInt64.random(in: 0...UInt64.max) & 0xFFFF_FFFF)")
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o666)
        guard fd >= 0 else {
            let e = errno
            var hint = "check that the directory exists and is writable"
            if e == ENOENT { hint = "the directory \(directory) does not exist; create it first" }
            if e == EACCES || e == EPERM { hint = "no permission to create files in \(directory); choose another location" }
            if e == EROFS { hint = "\(directory) is on a read-only file system; choose another location" }
            if e == ENOSPC { hint = "the disk is full; free some space" }
            throw EspalierError.data(file: path, problem: "cannot create a temporary file in \(directory) (\(errorText(e))); \(hint)")
        }

        var closed = false
        func fail(_ what: String, _ e: Int32) -> EspalierError {
            if !closed { close(fd); closed = true }
            unlink(temporary)
            var hint = "the old file is unchanged"
            if e == ENOSPC || e == EDQUOT { hint += "; the disk is full (or over quota): free some space and retry" }
            if e == EIO { hint += "; the disk reported an I/O error: check the device" }
            return EspalierError.data(file: path, problem: "\(what) failed (\(errorText(e))); \(hint)")
        }

        if let m = existingMode, fchmod(fd, m & 0o7777) != 0 { throw fail("setting permissions", errno) }

        // Write everything, retrying short writes and interruptions.
        let writeError: Int32? = data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) -> Int32? in
            guard var p = raw.baseAddress else { return nil }
            var left = raw.count
            while left > 0 {
                let n = Glibc_write(fd, p, min(left, 1 << 30))
                if n < 0 {
                    if errno == EINTR { continue }
                    return errno
                }
                if n == 0 { return EIO }
                p += n
                left -= n
            }
            return nil
        }
        if let e = writeError { throw fail("writing \(data.count) bytes", e) }
        if fsync(fd) != 0 { throw fail("flushing to disk (fsync)", errno) }
        closed = true
        if close(fd) != 0 {
            let e = errno
            unlink(temporary)
            throw EspalierError.data(file: path, problem: "closing the temporary file failed (\(errorText(e))); the old file is unchanged")
        }
        if rename(temporary, target) != 0 { throw fail("renaming the temporary file over the target", errno) }

        // Flush the directory so the rename is durable. Some file systems cannot fsync a
        // directory (EINVAL); that is not an error of ours.
        let dfd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 {
            let r = fsync(dfd)
            let e = errno
            close(dfd)
            if r != 0, e != EINVAL, e != EROFS, e != EBADF, e != ENOTSUP {
                throw EspalierError.data(file: path, problem: "the new content is in place, but flushing the directory \(directory) "
                                         + "failed (\(errorText(e))); it may not survive a crash: check the disk")
            }
        }
    }

    /// Writes a UTF-8 string atomically.
    public static func write(_ text: String, to path: String) throws {
        try write(Data(text.utf8), to: path)
    }

    // MARK: Helpers

    /// The directory holding `path` ("." for a bare file name).
    static func directoryOf(_ path: String) -> String {
        let d = (path as NSString).deletingLastPathComponent
        return d.isEmpty ? "." : d
    }

    /// Follows symbolic links at `path` (up to 32); a dangling link is returned as is, so it is replaced.
    static func resolveSymlink(_ path: String) -> String {
        var current = path
        for _ in 0..<32 {
            var st = stat()
            guard lstat(current, &st) == 0, (st.st_mode & S_IFMT) == S_IFLNK,
                  let dest = try? FileManager.default.destinationOfSymbolicLink(atPath: current) else { return current }
            current = dest.hasPrefix("/") ? dest : (directoryOf(current) as NSString).appendingPathComponent(dest)
        }
        return current
    }

    static func errorText(_ e: Int32) -> String { String(cString: strerror(e)) }
}

// `write` is shadowed inside `AtomicFile` by the static method of the same name.
@inline(__always)
private func Glibc_write(_ fd: Int32, _ p: UnsafeRawPointer, _ n: Int) -> Int {
    write(fd, p, n)
}
