// The `espalier` executable run as a user runs it, for the tests that drive the command line:
// started in a folder (with extra environment), its standard output and error together in a
// file that can be read while it runs, and its exit status.

import Foundation

public final class EspalierProcess {
    /// The executable `swift build` put beside the test bundle.
    public static var binary: String { PluginFixtures.builtPluginDir + "/espalier" }

    public let process = Process()
    private let outputFile: String

    /// Starts `espalier args…` (or `executable args…`) in `cwd`, with `environment` added to this process's.
    public init(_ args: [String], cwd: String, environment: [String: String] = [:], executable: String? = nil) throws {
        outputFile = FileManager.default.temporaryDirectory.appendingPathComponent("espalier-out-\(UUID().uuidString)").path
        _ = FileManager.default.createFile(atPath: outputFile, contents: nil)
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: outputFile))
        defer { try? h.close() }
        process.executableURL = URL(fileURLWithPath: executable ?? Self.binary)
        process.arguments = args
        process.currentDirectoryURL = URL(fileURLWithPath: cwd)
        if !environment.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        process.standardOutput = h
        process.standardError = h
        try process.run()
    }

    deinit { try? FileManager.default.removeItem(atPath: outputFile) }

    /// What it printed so far (standard output and error).
    public var output: String { (try? String(contentsOfFile: outputFile, encoding: .utf8)) ?? "" }

    /// Waits for it to end (terminating it after `timeout` seconds); its exit status.
    @discardableResult
    public func wait(timeout: Double = 120) -> Int32 {
        let end = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < end { Thread.sleep(forTimeInterval: 0.05) }
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
        return process.terminationStatus
    }

    /// Runs it to the end: status and output.
    public static func run(_ args: [String], cwd: String, environment: [String: String] = [:], timeout: Double = 120) throws -> (status: Int32, output: String) {
        let p = try EspalierProcess(args, cwd: cwd, environment: environment)
        let status = p.wait(timeout: timeout)
        return (status, p.output)
    }
}
