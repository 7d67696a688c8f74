// The output folder of a search: what may become one, and its lock.
// A new search writes only into a folder that does not exist yet or is empty, so `--out` can
// never overwrite or delete a user's files; `--resume` needs a folder with a search's
// config.json. While a process writes into a run folder it holds an exclusive lock on
// `OUT/.espalier.lock` (flock: released by the kernel when the process ends, even by kill -9),
// so two searches can never mix their files in one folder.

import EspalierCore
import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public enum RunFolder {
    public static let lockName = ".espalier.lock"

    /// Refuses an `--out` that is empty, a file, or a folder holding anything but our lock.
    public static func checkNew(_ dir: String) throws {
        guard !dir.trimmingCharacters(in: .whitespaces).isEmpty else {
            throw EspalierError.config("--out is empty; give the name of a new folder, e.g. --out runs/my-search")
        }
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir) else { return }
        guard isDir.boolValue else {
            throw EspalierError.config("--out \(dir) is a file, not a folder; choose a new folder name")
        }
        let entries: [String]
        do { entries = try FileManager.default.contentsOfDirectory(atPath: dir) } catch {
            throw EspalierError.config("--out \(dir) cannot be read (\(error.localizedDescription)); choose another folder")
        }
        let others = entries.filter { $0 != lockName }
        guard others.isEmpty else {
            if others.contains("config.json") {
                throw EspalierError.config("--out \(dir) already holds a search; continue it with --resume \(dir) "
                                           + "(or start it over with --resume \(dir) --restart), or choose another --out")
            }
            throw EspalierError.config("--out \(dir) is a folder that is not empty and not a search of Espalier's (it holds "
                                       + others.sorted().prefix(3).joined(separator: ", ") + (others.count > 3 ? ", …" : "")
                                       + "); a search never writes into a folder with other files: choose a new or empty folder")
        }
    }

    /// Refuses a `--resume` folder that is not a search's.
    public static func checkResumable(_ dir: String) throws {
        var isDir: ObjCBool = false
        guard !dir.isEmpty, FileManager.default.fileExists(atPath: dir, isDirectory: &isDir) else {
            throw EspalierError.config("--resume \(dir): no such folder; give the --out folder of an earlier search")
        }
        guard isDir.boolValue else { throw EspalierError.config("--resume \(dir) is a file; give the --out folder of an earlier search") }
        guard FileManager.default.fileExists(atPath: (dir as NSString).appendingPathComponent("config.json")) else {
            throw EspalierError.config("--resume \(dir) holds no config.json: it is not the --out folder of a search")
        }
    }
}

/// An exclusive lock on a run folder, held until `release()` or the end of the process.
public final class RunFolderLock {
    public let path: String
    private var fd: Int32

    private init(path: String, fd: Int32) { self.path = path; self.fd = fd }

    /// Creates `dir` if needed (a new run) and takes its lock, or says which process holds it.
    public static func acquire(_ dir: String, create: Bool) throws -> RunFolderLock {
        if create {
            do { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) } catch {
                throw EspalierError.config("cannot create the output folder \(dir) (\(error.localizedDescription)); choose another --out")
            }
        }
        let path = (dir as NSString).appendingPathComponent(RunFolder.lockName)
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw EspalierError.config("cannot create the lock \(path) (\(String(cString: strerror(errno)))); is \(dir) writable?")
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            var buf = [UInt8](repeating: 0, count: 32)
            let n = pread(fd, &buf, 31, 0)
            close(fd)
            let pid = n > 0 ? String(decoding: buf[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) : "?"
            throw EspalierError.config("another espalier process (pid \(pid)) is writing to \(dir); wait for it to finish, or choose another --out")
        }
        let text = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = text.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        return RunFolderLock(path: path, fd: fd)
    }

    /// Releases the lock (and removes the lock file when `remove`, e.g. when a new folder was refused).
    public func release(remove: Bool = false) {
        guard fd >= 0 else { return }
        if remove { unlink(path) }
        flock(fd, LOCK_UN)
        close(fd)
        fd = -1
    }

    deinit { release() }
}
