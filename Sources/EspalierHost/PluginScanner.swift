// Scanning plugin libraries out of process, as audio-plugin hosts do (JUCE, Tracktion, Ardour):
// each library is first opened, described, checked and initialised by a child process — the
// `espalier` executable re-run as `espalier scan-plugin PATH` — under a timeout. A library whose
// scan crashed (a signal), exited, or timed out is refused with that reason, and only libraries
// that scanned clean are ever dlopen-ed in the host's own process. Results are cached by file
// (path, size, modification and change times, inode; its FNV-1a hash recorded) together with the
// scanner's own identity and ABI settings, so an unchanged library is not scanned again.
// ESPALIER_SCAN=in-process turns the child processes off (debugging); ESPALIER_SCAN_TIMEOUT
// sets the per-library timeout in seconds (default 10); ESPALIER_SCAN_CACHE the cache file.

import EspalierCore
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// What the scan of one library found: clean (its component ids) or refused (why).
public struct PluginScanResult: Codable, Equatable, Sendable {
    public var ok: Bool
    public var reason: String?
    public var components: [String]

    public init(ok: Bool, reason: String? = nil, components: [String] = []) { self.ok = ok; self.reason = reason; self.components = components }

    /// The line a scanning child prints (the last such line of its output counts).
    public static let marker = "ESPALIER-SCAN "
}

public final class PluginScanner: @unchecked Sendable {
    /// The executable run as `EXECUTABLE scan-plugin PATH` (the host itself).
    public let executable: String
    /// Seconds a scan may take before its process is killed.
    public var timeout: Double
    /// The cache file (nil: no cache).
    public let cachePath: String?
    /// How many scans run at once.
    public var parallelism = max(2, min(8, ProcessInfo.processInfo.activeProcessorCount * 2))

    public init(executable: String, timeout: Double = 10, cachePath: String?) {
        self.executable = executable
        self.timeout = timeout
        self.cachePath = cachePath
    }

    /// The host's scanner: the `espalier` executable beside the running one (or the running one),
    /// nil when ESPALIER_SCAN=in-process or when there is no such executable.
    public static func standard(environment env: [String: String] = ProcessInfo.processInfo.environment) -> PluginScanner? {
        if env["ESPALIER_SCAN"] == "in-process" { return nil }
        guard let dir = PluginSearchPath.executableDirectory() else { return nil }
        let exe = (dir as NSString).appendingPathComponent("espalier")
        guard FileManager.default.isExecutableFile(atPath: exe) else { return nil }
        let timeout = env["ESPALIER_SCAN_TIMEOUT"].flatMap(Double.init).flatMap { $0 > 0 && $0.isFinite ? $0 : nil } ?? 10
        return PluginScanner(executable: exe, timeout: timeout, cachePath: env["ESPALIER_SCAN_CACHE"] ?? defaultCachePath(env))
    }

    static func defaultCachePath(_ env: [String: String]) -> String? {
        let base = env["XDG_CACHE_HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? env["HOME"].map { ($0 as NSString).appendingPathComponent(".cache") }
        return base.map { ($0 as NSString).appendingPathComponent("espalier/plugin-scan.json") }
    }

    // MARK: - Scanning

    /// The verdict on each of `files` (from the cache where the file is unchanged), scanning the
    /// others in child processes; `abi` names the loader's ABI settings, passed to the children.
    public func scan(_ files: [String], abi: ScanABI) -> [String: PluginScanResult] {
        var cache = loadCache()
        let scannerKey = identity(abi: abi)
        if cache.scanner != scannerKey { cache = ScanCache(scanner: scannerKey, entries: [:]) }
        var results: [String: PluginScanResult] = [:]
        var toScan: [(String, FileIdentity)] = []
        for file in files {
            guard let id = FileIdentity(path: file) else {
                results[file] = PluginScanResult(ok: false, reason: "cannot be read (stat failed)")
                continue
            }
            if let hit = cache.entries[file], hit.file == id { results[file] = hit.result } else { toScan.append((file, id)) }
        }
        if !toScan.isEmpty {
            /// What the concurrent scans found, behind a lock.
            final class Found: @unchecked Sendable {
                let lock = NSLock()
                var verdicts: [(String, ScanCache.Entry)] = []
            }
            let found = Found()
            let queue = OperationQueue()
            queue.maxConcurrentOperationCount = parallelism
            for (file, id) in toScan {
                queue.addOperation { [self] in
                    let entry = ScanCache.Entry(file: id, hash: Self.hash(of: file), result: scanOne(file, abi: abi))
                    found.lock.lock(); found.verdicts.append((file, entry)); found.lock.unlock()
                }
            }
            queue.waitUntilAllOperationsAreFinished()
            for (file, entry) in found.verdicts { results[file] = entry.result; cache.entries[file] = entry }
            // Entries of files that are gone (fixtures, rebuilt trees) are dropped.
            cache.entries = cache.entries.filter { FileManager.default.fileExists(atPath: $0.key) }
            saveCache(cache)
        }
        return results
    }

    /// Runs `EXECUTABLE scan-plugin PATH` with the timeout; its verdict, or why it has none.
    public func scanOne(_ file: String, abi: ScanABI) -> PluginScanResult {
        let output = FileManager.default.temporaryDirectory.appendingPathComponent("espalier-scan-\(getpid())-\(UUID().uuidString)").path
        _ = FileManager.default.createFile(atPath: output, contents: nil)
        defer { try? FileManager.default.removeItem(atPath: output) }
        guard let handle = FileHandle(forWritingAtPath: output) else { return PluginScanResult(ok: false, reason: "the scan could not start (no temporary file)") }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = ["scan-plugin", file, "--abi", "\(abi.major).\(abi.minor)", "--minimum-minor", String(abi.minimumMinor)]
        var env = ProcessInfo.processInfo.environment
        env["ESPALIER_SCAN"] = "in-process"
        env["SWIFT_BACKTRACE"] = "enable=no"   // a crash is the verdict; no backtrace to wait for
        p.environment = env
        p.standardOutput = handle
        p.standardError = handle
        p.standardInput = FileHandle.nullDevice
        let done = DispatchSemaphore(value: 0)
        p.terminationHandler = { _ in done.signal() }
        do { try p.run() } catch {
            try? handle.close()
            return PluginScanResult(ok: false, reason: "the scan could not start (\(error.localizedDescription))")
        }
        var timedOut = false
        if done.wait(timeout: .now() + timeout) == .timedOut {
            timedOut = true
            kill(p.processIdentifier, SIGKILL)
            done.wait()
        }
        try? handle.close()
        let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        if timedOut {
            return PluginScanResult(ok: false, reason: "its scan did not finish within \(Self.seconds(timeout)) (it hangs in its entry, init or a library constructor); killed")
        }
        if p.terminationReason == .uncaughtSignal {
            return PluginScanResult(ok: false, reason: "crashed during its scan with \(Self.signalName(p.terminationStatus)) (in its entry, init or a library constructor)")
        }
        if let line = text.split(separator: "\n").last(where: { $0.hasPrefix(PluginScanResult.marker) }),
           let r = try? JSONDecoder().decode(PluginScanResult.self, from: Data(line.dropFirst(PluginScanResult.marker.count).utf8)) {
            return r
        }
        let tail = text.split(separator: "\n").suffix(2).joined(separator: " | ")
        return PluginScanResult(ok: false, reason: "exited with status \(p.terminationStatus) during its scan, before the scan finished (it called exit?)"
                                + (tail.isEmpty ? "" : "; it printed: \(tail.prefix(200))"))
    }

    static func seconds(_ t: Double) -> String { t == t.rounded() ? "\(Int(t)) s" : String(format: "%.1f s", t) }

    public static func signalName(_ s: Int32) -> String {
        let names: [Int32: String] = [SIGSEGV: "SIGSEGV", SIGBUS: "SIGBUS", SIGABRT: "SIGABRT", SIGILL: "SIGILL", SIGFPE: "SIGFPE",
                                      SIGKILL: "SIGKILL", SIGTERM: "SIGTERM", SIGTRAP: "SIGTRAP", SIGSYS: "SIGSYS", SIGPIPE: "SIGPIPE"]
        return names[s] ?? "signal \(s)"
    }

    // MARK: - Cache

    /// The loader's ABI settings: a scan under other settings is another scan.
    public struct ScanABI: Sendable {
        public var major: UInt32, minor: UInt32, minimumMinor: UInt32
        public init(major: UInt32, minor: UInt32, minimumMinor: UInt32) { self.major = major; self.minor = minor; self.minimumMinor = minimumMinor }
    }

    struct FileIdentity: Codable, Equatable {
        var size: Int64, mtime: Int64, ctime: Int64, inode: UInt64, device: UInt64
        init?(path: String) {
            var st = stat()
            guard stat(path, &st) == 0 else { return nil }
            size = Int64(st.st_size)
            mtime = Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec)
            ctime = Int64(st.st_ctim.tv_sec) * 1_000_000_000 + Int64(st.st_ctim.tv_nsec)
            inode = UInt64(st.st_ino); device = UInt64(st.st_dev)
        }
    }

    struct ScanCache: Codable {
        struct Entry: Codable { var file: FileIdentity; var hash: String; var result: PluginScanResult }
        var scanner: String
        var entries: [String: Entry]
    }

    /// The scanner's identity: the executable's file identity and the ABI settings.
    func identity(abi: ScanABI) -> String {
        let f = FileIdentity(path: executable)
        return "\(executable) \(f?.size ?? 0) \(f?.mtime ?? 0) abi \(abi.major).\(abi.minor) min \(abi.minimumMinor) format 1"
    }

    func loadCache() -> ScanCache {
        guard let path = cachePath, let data = FileManager.default.contents(atPath: path),
              let c = try? JSONDecoder().decode(ScanCache.self, from: data) else { return ScanCache(scanner: "", entries: [:]) }
        return c
    }

    /// Writes the cache atomically; a cache that cannot be written only costs a rescan next time.
    func saveCache(_ c: ScanCache) {
        guard let path = cachePath else { return }
        try? FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        if let data = try? enc.encode(c) { try? AtomicFile.write(data, to: path) }
    }

    /// FNV-1a (64 bits) of the file's bytes, recorded with its verdict.
    static func hash(of path: String) -> String {
        guard let data = FileManager.default.contents(atPath: path) else { return "" }
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        data.withUnsafeBytes { raw in for b in raw { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01b3 } }
        return String(format: "fnv1a64:%016llx", h)
    }
}
