// A supervised search (issue 15): `espalier search` runs the work in a worker process and
// survives it. A gate that segfaults at a chosen step: the supervisor names the plugin, the
// call, the epoch and the step, the checkpoint is intact, and --resume with the fixed plugin
// ends bit-identical to an uninterrupted run. A gate that hangs: a double Ctrl-C ends the worker
// and names the call it hung in.

import EspalierCore
import EspalierHost
import EspalierTestSupport
import Foundation
import XCTest

final class SupervisorTests: TemporaryDirectoryTestCase {
    /// Two steps per epoch (64 images, half for weights, batch 16), the fixture's linear gate.
    let args = ["search", "--dataset", "synthetic", "--train-images", "64", "--eval-images", "16", "--channels", "4", "--cells", "2",
                "--nodes", "2", "--batch-size", "16", "--epochs", "2", "--gate", "org.fixture.gate.linear/1"]

    func espalier(_ extra: [String]) throws -> (Int32, String) { try EspalierProcess.run(extra, cwd: dir) }

    func tensors(_ file: String) throws -> [String: [Float]] {
        try SafeTensorsFile.read(path: file).tensors.mapValues(\.values)
    }

    func testACrashingGate_IsNamed_AndResumeWithTheFixedPluginEndsBitIdentical() throws {
        let crashing = try PluginFixtures.tempDir("crashing"), fixed = try PluginFixtures.tempDir("fixed")
        try PluginFixtures.build("libespalier-fixture.so", in: crashing, defines: ["FIX_GATE_CRASH_STEP=3"])
        try PluginFixtures.build("libespalier-fixture.so", in: fixed)

        let (status, out) = try espalier(args + ["--plugin-dir", crashing, "--out", "run"])
        XCTAssertEqual(status, 70, out)
        for part in ["died with SIGSEGV", "plugin org.fixture.gate.linear/1", "org.fixture.gate.linear/1: forward", "epoch 2, step 4",
                     "1 epoch(s) done, step 2", "is intact", "espalier search --resume run"] {
            XCTAssertTrue(out.contains(part), "'\(part)' in: \(out)")
        }
        // Resumed with the fixed plugin, it ends as a run that never crashed.
        let (s2, o2) = try espalier(["search", "--resume", "run", "--plugin-dir", fixed])
        XCTAssertEqual(s2, 0, o2)
        let (s3, o3) = try espalier(args + ["--plugin-dir", fixed, "--out", "clean"])
        XCTAssertEqual(s3, 0, o3)
        let a = try tensors(path("run/checkpoint.safetensors")), b = try tensors(path("clean/checkpoint.safetensors"))
        XCTAssertEqual(Set(a.keys), Set(b.keys))
        for (name, v) in a { XCTAssertEqual(v, b[name], "\(name) differs from the uninterrupted run") }
        XCTAssertEqual(try String(contentsOfFile: path("run/genotype.json"), encoding: .utf8),
                       try String(contentsOfFile: path("clean/genotype.json"), encoding: .utf8))
    }

    func testAHangingGate_ADoubleCtrlCEndsItAndNamesTheCall() throws {
        let hanging = try PluginFixtures.tempDir("hanging")
        try PluginFixtures.build("libespalier-fixture.so", in: hanging, defines: ["FIX_GATE_HANG_STEP=3"])
        let r = try EspalierProcess(args + ["--plugin-dir", hanging, "--out", "run"], cwd: dir)
        let end = Date().addingTimeInterval(120)
        while r.process.isRunning && !r.output.contains("epoch 1/2") && Date() < end { Thread.sleep(forTimeInterval: 0.05) }
        Thread.sleep(forTimeInterval: 1.5)   // into step 4, where the gate hangs
        XCTAssertTrue(r.process.isRunning, r.output)
        kill(r.process.processIdentifier, SIGINT)
        Thread.sleep(forTimeInterval: 0.5)
        XCTAssertTrue(r.process.isRunning, "the first Ctrl-C waits for the step to end: \(r.output)")
        kill(r.process.processIdentifier, SIGINT)
        let status = r.wait(timeout: 20)
        let out = r.output
        XCTAssertEqual(status, 130, out)
        for part in ["second Ctrl-C", "hung in a call of plugin org.fixture.gate.linear/1", "org.fixture.gate.linear/1: forward",
                     "epoch 2, step 4", "is intact", "espalier search --resume run"] {
            XCTAssertTrue(out.contains(part), "'\(part)' in: \(out)")
        }
    }

    func testWithoutSupervision_OneProcessAsBefore() throws {
        let crashing = try PluginFixtures.tempDir("crashing")
        try PluginFixtures.build("libespalier-fixture.so", in: crashing, defines: ["FIX_GATE_CRASH_STEP=3"])
        let (status, out) = try espalier(args + ["--plugin-dir", crashing, "--out", "run", "--no-supervise"])
        XCTAssertNotEqual(status, 70, "no supervisor to report: the process itself dies by the signal")
        XCTAssertFalse(out.contains("continue with: espalier search --resume"), out)
    }
}
