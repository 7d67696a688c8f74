// Resuming keeps what plugins hold inside their instances (ABI 1.3 save_state / load_state): for
// random search, P-DARTS, GSparsity with ProxSGD, Bonsai-Net with its compression term,
// Zero-One-Shot, ETENAS, and ProxylessNAS with the expected-cost term, a
// search interrupted and resumed by a fresh SearchRun from its checkpoint ends exactly as the
// uninterrupted one (weights, α, batch-norm statistics, genotype, the plugins' own state); the same
// checkpoint with its plugin blobs removed (as written before they existed) still resumes but does
// not end the same (so the blobs are what makes the difference); a damaged blob is a clear error.

import EspalierCore
import EspalierHost
import EspalierSearch
import EspalierTestSupport
import XCTest

final class ResumeStateTests: TemporaryDirectoryTestCase {
    static let registry: PluginRegistry = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(environment: [:]))

    /// What a finished run is: every parameter and buffer, the genotype (or the derive error), the
    /// plugins' own state.
    struct Outcome: Equatable {
        var tensors: [String: [Float]]
        /// nil when derive failed (`deriveError` says why).
        var genotype: Genotype?
        var deriveError: String?
        var pluginStates: [[UInt8]?]
    }

    func outcome(_ run: SearchRun) throws -> Outcome {
        var t: [String: [Float]] = [:]
        for p in run.supernet.archParameters + run.supernet.weights { t[p.name] = p.value.array }
        for (i, b) in run.supernet.buffers.enumerated() { t["buffer\(i)"] = b.array }
        var genotype: Genotype?, deriveError: String?
        do { genotype = try run.derive() } catch { deriveError = "\(error)" }
        return Outcome(tensors: t, genotype: genotype, deriveError: deriveError,
                       pluginStates: try [run.strategy.saveState()] + run.regularizers.map { try $0.saveState() })
    }

    /// Runs `c` uninterrupted (A); interrupted after `stopAfter` steps (nil: after it finished) and
    /// resumed by a fresh run from the checkpoint (B); and resumed from a copy of B's checkpoint
    /// without the plugin blobs (C). C runs to the end, or — where `controlError` says how a
    /// missing blob makes it fail — must fail with exactly that (C is then nil); any other failure
    /// of C fails the test, so the control never passes by failing for an unrelated reason.
    func compare(_ c: SearchConfig, stopAfter: Int?, images: Int = 32, budget: Int? = nil, controlError: String? = nil,
                 file: StaticString = #filePath, line: UInt = #line) throws -> (a: Outcome, b: Outcome, c: Outcome?) {
        func make(_ out: String) throws -> SearchRun {
            let acc = MemoryAccountant()
            acc.budget = budget
            return try syntheticSearchRun(c, registry: Self.registry, images: images, accountant: acc, out: out)
        }
        let dirA = path("a"), dirB = path("b"), dirC = path("c")
        try SearchRun.prepareOutput(dirA, config: c)
        try SearchRun.prepareOutput(dirB, config: c)
        let a = try make(dirA)
        try a.run()
        let b1 = try make(dirB)
        if let stopAfter {
            b1.stopAfterSteps = stopAfter
            XCTAssertThrowsError(try b1.run()) { XCTAssertTrue($0 is SearchInterrupted, "\($0)") }
        } else {
            try b1.run()
        }
        try FileManager.default.copyItem(atPath: dirB, toPath: dirC)
        let b = try make(dirB)
        try b.resume(from: dirB)
        try b.run()
        // C: the checkpoint as written before plugin blobs existed.
        let checkpoint = dirC + "/checkpoint.safetensors"
        var st = try SafeTensorsFile.read(path: checkpoint)
        var meta = try JSONSerialization.jsonObject(with: Data(st.metadata["espalier.search"]!.utf8)) as! [String: Any]
        XCTAssertNotNil(meta["pluginStates"], "the checkpoint holds plugin blobs")
        meta["pluginStates"] = nil
        st.metadata["espalier.search"] = String(decoding: try JSONSerialization.data(withJSONObject: meta), as: UTF8.self)
        try st.write(path: checkpoint)
        let old = try make(dirC)
        try old.resume(from: dirC)   // an old checkpoint still resumes
        var oc: Outcome? = nil
        do {
            try old.run()
            oc = try outcome(old)
            if let controlError {
                XCTFail("without the plugin blobs the run should fail with '\(controlError)', but it ran to the end", file: file, line: line)
            }
        } catch {
            if let controlError {
                XCTAssertTrue("\(error)".contains(controlError), "without the plugin blobs the run should fail with '\(controlError)', not: \(error)",
                              file: file, line: line)
            } else {
                XCTFail("without the plugin blobs the run should run to the end (an old checkpoint resumes), but: \(error)", file: file, line: line)
            }
        }
        return (try outcome(a), try outcome(b), oc)
    }

    func assertResumesExactly(_ r: (a: Outcome, b: Outcome, c: Outcome?), file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(r.a.genotype, r.b.genotype, file: file, line: line)
        XCTAssertNotNil(r.a.genotype, r.a.deriveError ?? "", file: file, line: line)
        for (name, v) in r.a.tensors { XCTAssertEqual(v, r.b.tensors[name], "\(name) differs after resume", file: file, line: line) }
        XCTAssertEqual(r.a.pluginStates, r.b.pluginStates, "the plugins' own state differs after resume", file: file, line: line)
        XCTAssertTrue(r.a.pluginStates.contains { $0 != nil }, "a stateful plugin", file: file, line: line)
        // The control: the same checkpoint without the blobs ends with other weights, α or genotype (or fails).
        var control = r.c
        control?.pluginStates = r.a.pluginStates
        XCTAssertNotEqual(control, r.a, "without the blobs the resumed run does not end the same", file: file, line: line)
    }

    func testRandomSearch_ResumedKeepsTheBestArchitecture() throws {
        var c = tinySearchConfig(strategy: "espalier.strategy.random/1", settings: ["samples_per_epoch": "2", "child_steps": "2"],
                                 ops: ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"].map { "espalier.op.\($0)/1" }, epochs: 2)
        c.evalImages = 8
        // 4 steps per epoch: interrupted after epoch 2's samples (its first step).
        // Without its blob the resumed search has forgotten the samples it took before the interrupt: nothing to derive.
        let r = try compare(c, stopAfter: 5, controlError: "no architecture has been sampled and trained yet")
        assertResumesExactly(r)
    }

    func testPDarts_ResumedFinishedSearchDerivesFromTheLastStagesWeights() throws {
        let c = tinySearchConfig(strategy: "espalier.strategy.pdarts/1", settings: ["stage_cells": "2,3", "stage_ops": "5,1", "stage_epochs": "1", "skip_dropout": "0.1"], epochs: 2)
        let r = try compare(c, stopAfter: nil)
        assertResumesExactly(r)
    }

    func testGSparsityProxSGD_ResumedKeepsMomentumAndTheMuSweep() throws {
        var c = tinySearchConfig(strategy: "espalier.strategy.gsparsity/1", settings: ["target_sparsity": "0.5", "mu_start": "1", "prune": "false"], epochs: 3)
        c.regularizers = ["espalier.regularizer.proxsgd/1"]
        // Interrupted in the middle of epoch 2 (4 steps per epoch).
        let r = try compare(c, stopAfter: 6)
        assertResumesExactly(r)
        XCTAssertNotNil(r.c, "an old checkpoint resumes and runs to the end")
    }

    func testBonsai_ResumedInTheSecondSectionsWarmUp() throws {
        var c = SearchConfig()
        c.space.channels = 4; c.space.nodes = 2; c.space.multiplier = 2; c.space.stemMultiplier = 1
        c.space.ops = ["max_pool_3x3", "skip_connect", "sep_conv_3x3"].map { "espalier.op.\($0)/1" }
        c.space.cells = 2
        c.batchSize = 4; c.epochs = 4; c.seed = 3
        c.archLearningRate = 0.03; c.archWeightDecay = 0
        c.strategy = "espalier.strategy.bonsai/1"; c.gate = "espalier.gate.sawwave/1"; c.regularizers = ["espalier.regularizer.compression/1"]
        c.strategySettings = ["section_cells": "2,3", "margin": "0", "budget": "1GiB"]
        // Section 2 starts at epoch 2 with a weight-only epoch: interrupted after its first step.
        let r = try compare(c, stopAfter: 5)
        assertResumesExactly(r)
    }

    func testZeroOneShot_ResumedDoesNotPruneAgain() throws {
        let c = tinySearchConfig(strategy: "espalier.strategy.zero-one-shot/1", settings: ["batches": "1", "warmup_epochs": "0"], epochs: 2)
        let r = try compare(c, stopAfter: 2)
        assertResumesExactly(r)
    }

    func testEtenas_ResumedAfterItsSearchDoesNotSearchAgain() throws {
        let c = tinySearchConfig(strategy: "espalier.strategy.etenas/1", settings: ["batches": "1"], epochs: 1)
        // Without its blob ETENAS searches again, on the space it already pruned to one op per edge.
        let r = try compare(c, stopAfter: 1, controlError: "an edge has no active candidate")
        assertResumesExactly(r)
    }

    func testProxylessExpectedCost_ResumedKeepsTheReferenceCost() throws {
        var c = tinySearchConfig(strategy: "espalier.strategy.proxyless/1", ops: ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"].map { "espalier.op.\($0)/1" },
                                 epochs: 2)
        c.gate = "espalier.gate.binary/1"
        c.archLearningRate = 3e-2
        let reg = "espalier.regularizer.expected-cost/1"
        c.regularizers = [reg]
        c.regularizerSettings = [reg: ["cost": "memory", "lambda": "20"]]
        let r = try compare(c, stopAfter: 5)
        assertResumesExactly(r)
    }

    func testDamagedPluginState_IsAClearError() throws {
        var c = tinySearchConfig(strategy: "espalier.strategy.gsparsity/1", settings: ["prune": "false"], epochs: 2)
        c.regularizers = ["espalier.regularizer.proxsgd/1"]
        let out = path("run")
        try SearchRun.prepareOutput(out, config: c)
        let run = try syntheticSearchRun(c, registry: Self.registry, out: out)
        run.stopAfterSteps = 3
        XCTAssertThrowsError(try run.run())
        let file = out + "/checkpoint.safetensors"
        let original = try SafeTensorsFile.read(path: file)
        for (blob, expect) in [("AgAA", "saved state has format 2, this version reads format 1"), ("AQAA", "cut short"), ("%%", "not base64")] {
            var st = original
            var meta = try JSONSerialization.jsonObject(with: Data(st.metadata["espalier.search"]!.utf8)) as! [String: Any]
            var states = meta["pluginStates"] as! [String: String]
            XCTAssertEqual(states.keys.sorted(), ["regularizer/0/espalier.regularizer.proxsgd/1", "strategy/espalier.strategy.gsparsity/1"])
            states["regularizer/0/espalier.regularizer.proxsgd/1"] = blob
            meta["pluginStates"] = states
            st.metadata["espalier.search"] = String(decoding: try JSONSerialization.data(withJSONObject: meta), as: UTF8.self)
            try st.write(path: file)
            let resumed = try syntheticSearchRun(c, registry: Self.registry, out: out)
            XCTAssertThrowsError(try resumed.resume(from: out)) { error in
                let text = "\(error)"
                for part in ["espalier.regularizer.proxsgd/1", file, expect, "without --resume"] {
                    XCTAssertTrue(text.contains(part), "'\(part)' missing from: \(text)")
                }
            }
        }
    }
}
