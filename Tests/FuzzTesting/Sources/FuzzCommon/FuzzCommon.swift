// Helpers shared by the fuzz targets: the input as bytes, and a per-process scratch file for
// parsers that read a path (the real code path, file I/O included).

import Foundation

public enum FuzzInput {
    /// The fuzzer's input as an array (an empty input has a nil pointer).
    public static func bytes(_ start: UnsafePointer<UInt8>?, _ count: Int) -> [UInt8] {
        guard let start, count > 0 else { return [] }
        return Array(UnsafeBufferPointer(start: start, count: count))
    }

    /// A folder of this process's own (removed at exit is not needed: it lives in the temp folder).
    public static let directory: String = {
        let base = ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp"
        let dir = (base as NSString).appendingPathComponent("espalier-fuzz-\(getpid())")
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        atexit { try? FileManager.default.removeItem(atPath: FuzzInput.directory) }
        return dir
    }()

    /// Writes `bytes` to `name` in this process's scratch folder and returns its path.
    public static func file(_ bytes: [UInt8], name: String) -> String {
        let path = (directory as NSString).appendingPathComponent(name)
        let ok = bytes.withUnsafeBytes { raw -> Bool in
            guard let f = fopen(path, "wb") else { return false }
            defer { fclose(f) }
            return raw.isEmpty || fwrite(raw.baseAddress!, 1, raw.count, f) == raw.count
        }
        precondition(ok, "cannot write the fuzz input to \(path)")
        return path
    }
}

extension FuzzInput {
    /// FUZZ_VERBOSE=1: print what each input gave (accepted, or the error that refused it), to
    /// check a seed or a fail case: `FUZZ_VERBOSE=1 .build/debug/FuzzX -runs=0 Corpus/FuzzX`.
    public static let verbose = ProcessInfo.processInfo.environment["FUZZ_VERBOSE"] == "1"

    /// `body`'s value, or nil when it throws (a correct refusal); printed with FUZZ_VERBOSE=1.
    public static func attempt<T>(_ what: String, _ body: () throws -> T) -> T? {
        do {
            let value = try body()
            if verbose { print("\(what): accepted") }
            return value
        } catch {
            if verbose { print("\(what): refused: \(error)") }
            return nil
        }
    }
}
