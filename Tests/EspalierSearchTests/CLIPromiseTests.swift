// The `espalier search` command keeping the README's promises (issue 14), run as a user runs
// it: bad input is one clear line (no usage dump, no raw Foundation or encoding error, no folder
// left behind), `--resume` takes only what may change and refuses the rest by name, a missing
// checkpoint asks for --restart, a folder with a user's files is refused untouched, a folder in use
// by another search is refused, and a diverging search says so and keeps its last checkpoint.

import EspalierHost
import EspalierSearch
import EspalierTestSupport
import Foundation
import XCTest

final class CLIPromiseTests: TemporaryDirectoryTestCase {
    /// Runs espalier with `args` in `cwd` (default: the test's folder); status and stdout + stderr.
    func espalier(_ args: [String], cwd: String? = nil) throws -> (status: Int32, output: String) {
        try EspalierProcess.run(args, cwd: cwd ?? dir)
    }

    let tiny = ["--dataset", "synthetic", "--train-images", "64", "--eval-images", "16", "--channels", "4", "--cells", "2",
                "--nodes", "2", "--batch-size", "16"]

    override func setUpWithError() throws {
        try super.setUpWithError()
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: EspalierProcess.binary), "espalier is built beside the tests (swift build)")
    }

    /// One clear line: non-zero exit, the expected words, no usage, no raw error, nothing created.
    func assertClearError(_ args: [String], _ expect: String, creates: String? = nil, file: StaticString = #filePath, line: UInt = #line) throws {
        let (status, out) = try espalier(args)
        XCTAssertNotEqual(status, 0, out, file: file, line: line)
        XCTAssertTrue(out.contains(expect), "expected '\(expect)' in: \(out)", file: file, line: line)
        for raw in ["Usage:", "EncodingError", "NSCocoaErrorDomain", "Foundation.", "SearchSpaceDescription(", "Fatal error"] {
            XCTAssertFalse(out.contains(raw), "'\(raw)' in: \(out)", file: file, line: line)
        }
        if let creates { XCTAssertFalse(FileManager.default.fileExists(atPath: path(creates)), "\(creates) was created", file: file, line: line) }
    }

    func testNonsenseInput_OneClearLineEach() throws {
        try assertClearError(["search", "--train-images", "0", "--out", "o1"], "--train-images must be a positive", creates: "o1")
        try assertClearError(["search", "--train-images=-5", "--out", "o2"], "--train-images must be a positive", creates: "o2")
        try assertClearError(["search", "--eval-images=-3", "--out", "o3"], "--eval-images must be a positive", creates: "o3")
        try assertClearError(["search"] + tiny + ["--lr", "inf", "--out", "o4"], "--lr", creates: "o4")
        try assertClearError(["search"] + tiny + ["--arch-lr", "inf", "--out", "o5"], "--arch-lr", creates: "o5")
        try assertClearError(["search"] + tiny + ["--channels", "1", "--out", "o6"], "--channels must be at least 2 (got 1)", creates: "o6")
        try "x".write(toFile: path("a-file"), atomically: true, encoding: .utf8)
        try assertClearError(["search"] + tiny + ["--out", "a-file"], "is a file")
        try assertClearError(["search"] + tiny + ["--out", ""], "--out is empty")
        try assertClearError(["search"] + tiny + ["--strategy", "no.such.strategy/1", "--out", "o7"], "no.such.strategy/1", creates: "o7")
    }

    func testEmptyIDXFiles_AreAnError_NotAnUntrainedSearch() throws {
        // IDX headers with a count of 0 (images: magic 0x803, 0, 28, 28; labels: magic 0x801, 0).
        let data = path("empty-fmnist")
        try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
        try Data([0, 0, 8, 3, 0, 0, 0, 0, 0, 0, 0, 28, 0, 0, 0, 28]).write(to: URL(fileURLWithPath: data + "/train-images-idx3-ubyte"))
        try Data([0, 0, 8, 1, 0, 0, 0, 0]).write(to: URL(fileURLWithPath: data + "/train-labels-idx1-ubyte"))
        try assertClearError(["search", "--data-dir", data, "--channels", "4", "--cells", "2", "--epochs", "1", "--out", "o"], "holds no images", creates: "o")
    }

    func testOut_AFolderWithAUsersFiles_IsRefusedAndUntouched() throws {
        let mine = path("mine")
        try FileManager.default.createDirectory(atPath: mine, withIntermediateDirectories: true)
        try "my notes".write(toFile: mine + "/config.json", atomically: true, encoding: .utf8)
        try "my log".write(toFile: mine + "/log.jsonl", atomically: true, encoding: .utf8)
        try assertClearError(["search"] + tiny + ["--epochs", "1", "--out", "mine"], "already holds a search")
        try FileManager.default.removeItem(atPath: mine + "/config.json")
        try assertClearError(["search"] + tiny + ["--epochs", "1", "--out", "mine"], "not empty and not a search")
        XCTAssertEqual(try String(contentsOfFile: mine + "/log.jsonl", encoding: .utf8), "my log")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: mine), ["log.jsonl"])
    }

    func testResume_AcceptsWhatMayChange_RefusesTheRest_AndNeedsACheckpoint() throws {
        let (s1, o1) = try espalier(["search"] + tiny + ["--epochs", "1", "--out", "run"])
        XCTAssertEqual(s1, 0, o1)
        // Search-defining flags are refused by name.
        try assertClearError(["search", "--resume", "run", "--epochs", "5", "--lr", "0.1"], "--epochs, --lr cannot be given with it")
        try assertClearError(["search", "--resume", "run", "--out", "elsewhere"], "--out cannot be given with it", creates: "elsewhere")
        // The budget may change, and is used: a budget below the prediction is refused before the run.
        try assertClearError(["search", "--resume", "run", "--memory-budget", "1KiB"], "exceeds --memory-budget 1.00 KiB")
        // A relative plugin folder is saved absolute, so the run resumes from another folder.
        let plugins = path("plugins")
        try FileManager.default.createDirectory(atPath: plugins, withIntermediateDirectories: true)
        try FileManager.default.removeItem(atPath: path("run"))
        let (s2, o2) = try espalier(["search"] + tiny + ["--epochs", "1", "--plugin-dir", "plugins", "--out", "run"])
        XCTAssertEqual(s2, 0, o2)
        let config = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path("run/config.json")))) as? [String: Any])
        XCTAssertEqual(config["pluginDirs"] as? [String], [plugins])
        // No checkpoint (stopped before the first epoch ended): an error naming --restart, then --restart.
        try FileManager.default.removeItem(atPath: path("run/checkpoint.safetensors"))
        try assertClearError(["search", "--resume", path("run")], "--restart")
        let (s3, o3) = try espalier(["search", "--resume", path("run"), "--restart", "--threads", "1"], cwd: NSTemporaryDirectory())
        XCTAssertEqual(s3, 0, o3)
        XCTAssertTrue(o3.contains("starting") && o3.contains("over"), o3)
        XCTAssertEqual(try String(contentsOfFile: path("run/log.jsonl"), encoding: .utf8).split(separator: "\n").count, 1, "epoch 1 logged once")
    }

    func testTwoSearches_InOneFolder_TheSecondIsRefused() throws {
        // This test process holds the folder's lock, as a search writing into it would (flock
        // locks belong to an open file, so the espalier process started below is refused).
        let out = path("busy")
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        try "{\"dataset\": \"synthetic\"}".write(toFile: out + "/config.json", atomically: true, encoding: .utf8)
        let lock = try RunFolderLock.acquire(out, create: false)
        defer { lock.release() }
        try assertClearError(["search", "--resume", out], "another espalier process (pid \(getpid()))")
    }

    func testDivergingSearch_SaysSo_AndWritesTheLogLine() throws {
        let (status, out) = try espalier(["search"] + tiny + ["--epochs", "2", "--lr", "1e38", "--out", "diverging"])
        XCTAssertNotEqual(status, 0, out)
        XCTAssertTrue(out.contains("the search diverged at epoch") && out.contains("lower --lr / --arch-lr"), out)
        XCTAssertFalse(out.contains("EncodingError") || out.contains("-nan"), out)
        let lines = try String(contentsOfFile: path("diverging/log.jsonl"), encoding: .utf8).split(separator: "\n")
        XCTAssertTrue(lines.last?.contains("\"diverged\":true") ?? false, "\(lines)")
    }
}

