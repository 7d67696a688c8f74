// What a search run promises about its folder and its files (issue 14): a new search never
// writes into a folder that is not empty (a user's files are never touched), two processes never
// share one, a missing checkpoint is no silent restart, stale temporaries and duplicated log
// lines are cleaned on resume, a checkpoint carries a checksum and no non-finite value, and a
// diverging search stops at its first non-finite loss with its last good checkpoint kept.

import EspalierCore
import EspalierHost
import EspalierSearch
import EspalierTestSupport
import Foundation
import XCTest

final class RunFolderTests: TemporaryDirectoryTestCase {
    static let registry: PluginRegistry = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(environment: [:]))

    func makeRun(_ c: SearchConfig, out: String?) throws -> SearchRun {
        try syntheticSearchRun(c, registry: Self.registry, images: 16, out: out)
    }

    func logLines(_ dir: String) throws -> [[String: Any]] {
        try String(contentsOfFile: dir + "/log.jsonl", encoding: .utf8).split(separator: "\n").map {
            try XCTUnwrap(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
        }
    }

    // MARK: - --out

    func testNewSearch_RefusesAFolderWithOtherFiles_AndLeavesThemAlone() throws {
        let user = path("my-folder")
        try FileManager.default.createDirectory(atPath: user, withIntermediateDirectories: true)
        for name in ["notes.txt", "log.jsonl", "genotype.json"] { try "mine \(name)".write(toFile: user + "/" + name, atomically: true, encoding: .utf8) }
        XCTAssertThrowsError(try SearchRun.prepareOutput(user, config: tinySearchConfig())) { e in
            XCTAssertTrue("\(e)".contains("not empty and not a search"), "\(e)")
        }
        for name in ["notes.txt", "log.jsonl", "genotype.json"] {
            XCTAssertEqual(try String(contentsOfFile: user + "/" + name, encoding: .utf8), "mine \(name)", "\(name) untouched")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: user + "/config.json"))
        // A file, an empty name, and another run's folder.
        try "x".write(toFile: path("a-file"), atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try SearchRun.prepareOutput(path("a-file"), config: tinySearchConfig())) { XCTAssertTrue("\($0)".contains("is a file"), "\($0)") }
        XCTAssertThrowsError(try SearchRun.prepareOutput("", config: tinySearchConfig())) { XCTAssertTrue("\($0)".contains("--out is empty"), "\($0)") }
        try SearchRun.prepareOutput(path("run"), config: tinySearchConfig())
        XCTAssertThrowsError(try SearchRun.prepareOutput(path("run"), config: tinySearchConfig())) {
            XCTAssertTrue("\($0)".contains("already holds a search") && "\($0)".contains("--resume"), "\($0)")
        }
        // New and empty folders are fine.
        try FileManager.default.createDirectory(atPath: path("empty"), withIntermediateDirectories: true)
        try SearchRun.prepareOutput(path("empty"), config: tinySearchConfig())
    }

    func testRunFolderLock_IsExclusive_AndReleased() throws {
        let out = path("locked")
        let first = try RunFolderLock.acquire(out, create: true)
        XCTAssertThrowsError(try RunFolderLock.acquire(out, create: false)) { e in
            XCTAssertTrue("\(e)".contains("another espalier process (pid \(getpid()))"), "\(e)")
        }
        first.release()
        let second = try RunFolderLock.acquire(out, create: false)
        second.release(remove: true)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/" + RunFolder.lockName))
    }

    // MARK: - Resume

    func testResume_WithoutCheckpoint_IsAnError_UnlessRestart() throws {
        let c = tinySearchConfig(epochs: 1)
        let out = path("run")
        try SearchRun.prepareOutput(out, config: c)
        // A line a killed first epoch left, and a temporary of its interrupted checkpoint write.
        try "{\"epoch\":1}\n".write(toFile: out + "/log.jsonl", atomically: true, encoding: .utf8)
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: out + "/.checkpoint.safetensors.tmp-123-456"))
        let run = try makeRun(c, out: out)
        XCTAssertThrowsError(try run.resume(from: out)) { e in
            XCTAssertTrue("\(e)".contains("holds no checkpoint") && "\(e)".contains("--restart"), "\(e)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/.checkpoint.safetensors.tmp-123-456"), "the stale temporary is removed")
        try run.resume(from: out, restart: true)
        try run.run()
        let lines = try logLines(out)
        XCTAssertEqual(lines.map { $0["epoch"] as? Int }, [1], "one line for epoch 1, not two")
        // With a checkpoint, --restart would throw it away: refused.
        XCTAssertThrowsError(try makeRun(c, out: out).resume(from: out, restart: true)) { XCTAssertTrue("\($0)".contains("holds a checkpoint"), "\($0)") }
    }

    func testResume_AfterAKillBetweenLogAndCheckpoint_LogsEachEpochOnce() throws {
        let c = tinySearchConfig(epochs: 2)
        let out = path("run")
        try SearchRun.prepareOutput(out, config: c)
        let a = try makeRun(c, out: out)
        a.stopAfterSteps = 3   // epoch 1 has 2 steps: stopped in the first step of epoch 2
        XCTAssertThrowsError(try a.run()) { XCTAssertTrue($0 is SearchInterrupted, "\($0)") }
        XCTAssertEqual(try logLines(out).count, 1)
        // A kill after the log line of epoch 2 but before its checkpoint: the line is there, the checkpoint is epoch 1's.
        let text = try String(contentsOfFile: out + "/log.jsonl", encoding: .utf8)
        try (text + text.replacingOccurrences(of: "\"epoch\":1", with: "\"epoch\":2")).write(toFile: out + "/log.jsonl", atomically: true, encoding: .utf8)
        try Data([0]).write(to: URL(fileURLWithPath: out + "/.log.jsonl.tmp-1-2"))
        let b = try makeRun(c, out: out)
        try b.resume(from: out)
        try b.run()
        XCTAssertEqual(try logLines(out).map { $0["epoch"] as? Int }, [1, 2])
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + "/.log.jsonl.tmp-1-2"))
    }

    func testResumeMidEpoch_LogsTheWholeEpochsLossTerms() throws {
        var c = tinySearchConfig(epochs: 1)
        c.regularizers = ["espalier.regularizer.beta-decay/1"]
        let whole = path("whole"), split = path("split")
        try SearchRun.prepareOutput(whole, config: c)
        try SearchRun.prepareOutput(split, config: c)
        try makeRun(c, out: whole).run()
        let first = try makeRun(c, out: split)
        first.stopAfterSteps = 1   // mid-epoch: one of its two steps done
        XCTAssertThrowsError(try first.run())
        let second = try makeRun(c, out: split)
        try second.resume(from: split)
        try second.run()
        let a = try XCTUnwrap(logLines(whole).last), b = try XCTUnwrap(logLines(split).last)
        XCTAssertNotNil(a["arch_loss"])
        XCTAssertEqual(a["arch_loss"] as? Double, b["arch_loss"] as? Double, "the epoch's mean architecture loss over both steps")
        XCTAssertEqual(a["regularizer_terms"] as? [String: Double], b["regularizer_terms"] as? [String: Double])
    }

    // MARK: - Checkpoint integrity

    func interruptedCheckpoint() throws -> (out: String, file: String, c: SearchConfig) {
        let c = tinySearchConfig(epochs: 2)
        let out = path("run")
        try SearchRun.prepareOutput(out, config: c)
        let a = try makeRun(c, out: out)
        a.stopAfterSteps = 1
        XCTAssertThrowsError(try a.run())
        return (out, out + "/checkpoint.safetensors", c)
    }

    func testCheckpoint_EditedHeaderValue_IsRefusedByTheChecksum() throws {
        let (out, file, c) = try interruptedCheckpoint()
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: file)))
        let text = String(decoding: bytes, as: UTF8.self)
        // The metadata holds the JSON of the loop position, escaped inside a JSON string: globalStep 1 → 7, same length.
        let needle = Array("\\\"globalStep\\\":1".utf8)
        let at = try XCTUnwrap((0...(bytes.count - needle.count)).first { Array(bytes[$0..<($0 + needle.count)]) == needle }, text.prefix(400).description)
        bytes[at + needle.count - 1] = UInt8(ascii: "7")
        try Data(bytes).write(to: URL(fileURLWithPath: file))
        XCTAssertThrowsError(try makeRun(c, out: out).resume(from: out)) { e in
            XCTAssertTrue("\(e)".contains("checksum does not match"), "\(e)")
        }
        // A flipped data byte too (the last byte of the file is tensor data).
        try FileManager.default.removeItem(atPath: out)
        let (out2, file2, _) = try interruptedCheckpoint()
        var data = [UInt8](try Data(contentsOf: URL(fileURLWithPath: file2)))
        data[data.count - 1] ^= 0x01
        try Data(data).write(to: URL(fileURLWithPath: file2))
        XCTAssertThrowsError(try makeRun(c, out: out2).resume(from: out2)) { XCTAssertTrue("\($0)".contains("checksum does not match"), "\($0)") }
    }

    func testCheckpoint_WithANaN_IsRefused() throws {
        let (out, file, c) = try interruptedCheckpoint()
        var st = try SafeTensorsFile.read(path: file)
        let name = try XCTUnwrap(st.names.first { $0.hasPrefix("weights/") })
        st.tensors[name]!.values[0] = .nan
        try st.write(path: file)   // a consistent checksum: only the value check can catch it
        XCTAssertThrowsError(try makeRun(c, out: out).resume(from: out)) { e in
            XCTAssertTrue("\(e)".contains("'\(name)' holds a non-finite value"), "\(e)")
        }
    }

    func testSafeTensors_Checksum_IsVerifiedWhenPresent() throws {
        var f = SafeTensorsFile(tensors: ["w": .init(shape: [2], values: [1, 2])], metadata: ["k": "v"])
        try f.write(path: path("plain.safetensors"))
        XCTAssertNil(try SafeTensorsFile.read(path: path("plain.safetensors")).metadata[SafeTensorsFile.checksumKey], "opt-in")
        try f.write(path: path("sum.safetensors"), checksum: true)
        let back = try SafeTensorsFile.read(path: path("sum.safetensors"))
        XCTAssertEqual(back.metadata[SafeTensorsFile.checksumKey], f.contentChecksum())
        f.tensors["w"]!.values[1] = 3
        XCTAssertNotEqual(f.contentChecksum(), back.contentChecksum(), "a value changes the checksum")
        f.metadata["k"] = "w"
        f.tensors["w"]!.values[1] = 2
        XCTAssertNotEqual(f.contentChecksum(), back.contentChecksum(), "a metadata value changes the checksum")
    }

    // MARK: - Divergence

    final class PoisonAfterFirstEpoch: SearchProgress {
        let run: () -> SearchRun?
        init(_ run: @escaping () -> SearchRun?) { self.run = run }
        func step(_ done: Int, of total: Int, loss: Double, accuracy: Double) {}
        func epochDone(_ log: SearchEpochLog) {
            // After epoch 1's checkpoint: a weight becomes NaN, so epoch 2's first loss is NaN.
            if log.epoch == 1, let r = run() { for p in r.supernet.weights { p.value[0] = .nan } }
        }
    }

    func testDivergence_StopsAtTheFirstNonFiniteLoss_KeepingTheLastGoodCheckpoint() throws {
        let c = tinySearchConfig(epochs: 3)
        let out = path("run")
        try SearchRun.prepareOutput(out, config: c)
        let run = try makeRun(c, out: out)
        XCTAssertThrowsError(try run.run(progress: PoisonAfterFirstEpoch { [weak run] in run })) { e in
            guard let d = e as? SearchDiverged else { return XCTFail("\(e)") }
            XCTAssertEqual(d.epoch, 2); XCTAssertEqual(d.step, 1)
            XCTAssertTrue(d.description.contains("diverged at epoch 2 step 1") && d.description.contains("lower --lr / --arch-lr"), d.description)
            XCTAssertEqual(d.checkpoint, out + "/checkpoint.safetensors")
        }
        let lines = try logLines(out)
        XCTAssertEqual(lines.count, 2)
        XCTAssertEqual(lines[1]["diverged"] as? Bool, true)
        XCTAssertEqual(lines[1]["loss"] as? String, "nan")
        // The checkpoint is epoch 1's (finite), so the search resumes from it; the diverged line goes.
        let again = try makeRun(c, out: out)
        try again.resume(from: out)
        XCTAssertEqual(again.epoch, 1)
        XCTAssertEqual(try logLines(out).count, 1)
    }

    // MARK: - Inputs

    func testNonsenseSettings_AreRefused_WithTheFlagNamed() throws {
        func refused(_ change: (inout SearchConfig) -> Void, _ expect: String, line: UInt = #line) {
            var c = tinySearchConfig()
            change(&c)
            XCTAssertThrowsError(try c.validate(), line: line) { XCTAssertTrue("\($0)".contains(expect), "\($0)", line: line) }
        }
        refused({ $0.learningRate = .infinity }, "--lr")
        refused({ $0.learningRate = .nan }, "--lr")
        refused({ $0.archLearningRate = .infinity }, "--arch-lr")
        refused({ $0.trainImages = 0 }, "--train-images must be a positive")
        refused({ $0.trainImages = -5 }, "--train-images must be a positive")
        refused({ $0.evalImages = -3 }, "--eval-images must be a positive")
        refused({ $0.space.channels = 1 }, "--channels must be at least 2 (got 1)")
        refused({ $0.space.cells = Int.max }, "--cells must be between 1 and 1024")
        refused({ $0.space.nodes = 1 << 40 }, "--nodes must be between 1 and 64")
        refused({ $0.space.channels = 1 << 40 }, "--channels")
        // The fuzz target's fail case: a config.json with cells near Int.max loads (no trap in its reductions) and is refused.
        let failCase = PluginFixtures.repoRoot.appendingPathComponent("Tests/FuzzTesting/FailCases/FuzzSearchConfig/cells-int-max.json").path
        let dir = path("fuzz-config")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: failCase, toPath: dir + "/config.json")
        let loaded = try SearchRun.loadConfig(dir)
        XCTAssertEqual(loaded.space.reductions.count, 2)
        XCTAssertThrowsError(try loaded.validate())
        var c = tinySearchConfig()
        c.space.channels = 1
        XCTAssertThrowsError(try c.validate()) { XCTAssertFalse("\($0)".contains("SearchSpaceDescription"), "no struct dump: \($0)") }
    }

    func testTooFewImages_IsAnError_NotAnUntrainedSearch() throws {
        let c = tinySearchConfig()
        let acc = MemoryAccountant()
        let ds = try Dataset.synthetic(count: 6, channels: 1, height: 8, width: 8, classes: 3, seed: 1, accountant: acc)
        XCTAssertThrowsError(try SearchRun(config: c, registry: Self.registry, context: HostContext(accountant: acc, seed: 1),
                                           train: ds.all.prefix(0), outDirectory: nil)) { e in
            XCTAssertTrue("\(e)".contains("fewer than one batch"), "\(e)")
        }
    }
}
