// The `espalier` executable as a user runs it: a search interrupted with Ctrl-C (SIGINT) writes
// a checkpoint and exits cleanly, `--resume` finishes it, and bad input gets a clear error.

import EspalierHost
import EspalierTestSupport
import Foundation
import XCTest

final class CLITests: XCTestCase {
    var binary: String { (PluginSearchPath.executableDirectory() ?? ".") + "/espalier" }

    func run(_ args: [String], interruptAfter: ((String) -> Bool)? = nil) throws -> (status: Int32, output: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = args
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        final class Buffer: @unchecked Sendable { var data = Data() }
        let buffer = Buffer()
        let lock = NSLock()
        pipe.fileHandleForReading.readabilityHandler = { h in
            let d = h.availableData
            lock.lock(); buffer.data.append(d); lock.unlock()
        }
        try p.run()
        if let interruptAfter {
            let deadline = Date().addingTimeInterval(120)
            while p.isRunning && Date() < deadline {
                lock.lock(); let text = String(decoding: buffer.data, as: UTF8.self); lock.unlock()
                if interruptAfter(text) { kill(p.processIdentifier, SIGINT); break }
                Thread.sleep(forTimeInterval: 0.05)
            }
        }
        p.waitUntilExit()
        pipe.fileHandleForReading.readabilityHandler = nil
        lock.lock(); defer { lock.unlock() }
        buffer.data.append(pipe.fileHandleForReading.readDataToEndOfFile())
        return (p.terminationStatus, String(decoding: buffer.data, as: UTF8.self))
    }

    func testCtrlC_WritesACheckpoint_AndResumeFinishesTheSearch() throws {
        _ = try Prerequisite.espalierBinary(in: (binary as NSString).deletingLastPathComponent)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("espalier-cli-\(UUID().uuidString)").path
        let args = ["search", "--dataset", "synthetic", "--train-images", "128", "--eval-images", "32", "--channels", "4",
                    "--cells", "3", "--batch-size", "16", "--epochs", "2", "--out", dir]
        // Interrupt once the first epoch has finished and a step of the second has run.
        let (status, out) = try run(args) { $0.contains("epoch 1/2") }
        XCTAssertEqual(status, 130, out)
        XCTAssertTrue(out.contains("resume with: espalier search --resume"), out)
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/checkpoint.safetensors"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/genotype.json"))
        let (status2, out2) = try run(["search", "--resume", dir])
        XCTAssertEqual(status2, 0, out2)
        XCTAssertTrue(out2.contains("resuming"), out2)
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/genotype.json"), out2)
        let log = try String(contentsOfFile: dir + "/log.jsonl", encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(log.count, 2, "one line per epoch, none twice")
    }

    func testBadInput_ClearErrors() throws {
        _ = try Prerequisite.espalierBinary(in: (binary as NSString).deletingLastPathComponent)
        let (s1, o1) = try run(["search", "--gate", "espalier.gate.nope/1", "--dataset", "synthetic", "--dry-run"])
        XCTAssertNotEqual(s1, 0)
        XCTAssertTrue(o1.contains("unknown gate 'espalier.gate.nope/1'; available: "), o1)
        let (s2, o2) = try run(["search", "--dataset", "fashion-mnist", "--data-dir", "/nonexistent", "--dry-run"])
        XCTAssertNotEqual(s2, 0)
        XCTAssertTrue(o2.contains("dataset-fashion-mnist"), o2)
        let (s3, o3) = try run(["train", "--genotype", "/nonexistent/genotype.json"])
        XCTAssertNotEqual(s3, 0)
        XCTAssertTrue(o3.contains("/nonexistent/genotype.json"), o3)
        let (s4, o4) = try run(["search", "--dataset", "synthetic", "--memory-budget", "1MiB", "--dry-run"])
        XCTAssertNotEqual(s4, 0)
        XCTAssertTrue(o4.contains("exceeds --memory-budget"), o4)
        let (s5, o5) = try run(["search", "--dataset", "synthetic", "--aggregator", "stack", "--dry-run"])
        XCTAssertNotEqual(s5, 0)
        XCTAssertTrue(o5.contains("--aggregator 'stack' is not one of sum, concat"), o5)
        let (s6, o6) = try run(["search", "--dataset", "synthetic", "--aggregator", "concat", "--partial-channels", "2", "--dry-run"])
        XCTAssertNotEqual(s6, 0)
        XCTAssertTrue(o6.contains("concat aggregator"), o6)
    }
}
