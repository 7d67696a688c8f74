// Resuming in the middle of a run whose steps draw random numbers ends bit for bit as the
// uninterrupted run: P-DARTS's skip-connect dropout draws its masks from the graph's RNG, GDAS's
// Gumbel noise from the host's (context) RNG. Both are seeded anew before every step from the
// run's seed and the step alone (so that every rank of a search on several ranks draws the same,
// SearchRun+Ranks.swift), so a step's draws cannot depend on what happened before it. The
// control: the same checkpoint with that RNG state put back to a fresh run's ends exactly the
// same — it would not if the draws continued the saved stream instead (as they did before the
// reseeding), so the test fails if the reseeding is lost as well as if the resume is wrong.

import EspalierCore
import EspalierHost
import EspalierSearch
import EspalierTestSupport
import Foundation
import XCTest

final class ResumeRNGTests: TemporaryDirectoryTestCase {
    static let registry: PluginRegistry = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(environment: [:]))

    /// Every weight, α and buffer of a run by name, and the step it reached.
    struct EndState: Equatable {
        var tensors: [String: [Float]]
        var globalStep: Int
    }

    func endState(_ run: SearchRun) -> EndState {
        var t: [String: [Float]] = [:]
        for p in run.supernet.archParameters + run.supernet.weights { t[p.name] = p.value.array }
        for (i, b) in run.supernet.buffers.enumerated() { t["buffer\(i)"] = b.array }
        return EndState(tensors: t, globalStep: run.globalStep)
    }

    func make(_ c: SearchConfig, out: String?) throws -> SearchRun {
        try syntheticSearchRun(c, registry: Self.registry, images: 32, out: out)
    }

    /// A (uninterrupted), B (stopped after `stopAfter` steps, resumed by a fresh run) and the control
    /// C (B's checkpoint with `rngKey`, "graphRNG" or "contextRNG", set to a fresh run's state).
    func compare(_ c: SearchConfig, stopAfter: Int, rngKey: String) throws -> (a: EndState, b: EndState, c: EndState) {
        let dirA = path("a"), dirB = path("b"), dirC = path("c")
        for d in [dirA, dirB] { try SearchRun.prepareOutput(d, config: c) }
        let a = try make(c, out: dirA)
        try a.run()
        let b1 = try make(c, out: dirB)
        b1.stopAfterSteps = stopAfter
        XCTAssertThrowsError(try b1.run()) { XCTAssertTrue($0 is SearchInterrupted, "\($0)") }
        XCTAssertEqual(b1.globalStep, stopAfter)
        try FileManager.default.copyItem(atPath: dirB, toPath: dirC)
        let b = try make(c, out: dirB)
        try b.resume(from: dirB)
        XCTAssertEqual(b.globalStep, stopAfter, "resumed where it stopped")
        try b.run()

        // C: the checkpoint with the RNG as a run that never stepped has it.
        let fresh = try make(c, out: nil)
        let rng = rngKey == "graphRNG" ? fresh.graph.rng : fresh.context.rng
        let file = dirC + "/checkpoint.safetensors"
        var st = try SafeTensorsFile.read(path: file)
        var meta = try JSONSerialization.jsonObject(with: Data(st.metadata["espalier.search"]!.utf8)) as! [String: Any]
        let saved = try XCTUnwrap(meta[rngKey], "the checkpoint holds \(rngKey)")
        let replacement = try JSONSerialization.jsonObject(with: try JSONEncoder().encode(rng))
        XCTAssertNotEqual(try JSONSerialization.data(withJSONObject: saved, options: .sortedKeys),
                          try JSONSerialization.data(withJSONObject: replacement, options: .sortedKeys),
                          "\(rngKey) moved during the first \(stopAfter) steps")
        meta[rngKey] = replacement
        st.metadata["espalier.search"] = String(decoding: try JSONSerialization.data(withJSONObject: meta), as: UTF8.self)
        try st.write(path: file)
        let control = try make(c, out: dirC)
        try control.resume(from: dirC)
        try control.run()
        return (endState(a), endState(b), endState(control))
    }

    func assertBitIdentical(_ r: (a: EndState, b: EndState, c: EndState), _ rng: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(r.a.globalStep, r.b.globalStep, file: file, line: line)
        XCTAssertEqual(r.a.tensors.keys.sorted(), r.b.tensors.keys.sorted(), "the same parameters and buffers (the same ops kept)", file: file, line: line)
        let differing = r.a.tensors.keys.sorted().filter { r.a.tensors[$0] != r.b.tensors[$0] }
        XCTAssertEqual(differing, [], "after resuming mid-run these differ from the uninterrupted run (is the \(rng) restored?)", file: file, line: line)
        XCTAssertEqual(r.c.tensors, r.a.tensors, "control: the \(rng) is seeded from (seed, step) before every step, so a fresh run's state in the checkpoint changes nothing", file: file, line: line)
    }

    func testPDartsWithSkipDropout_ResumedMidStage_EndsBitIdentical() throws {
        // 4 steps per epoch, stages of 2 epochs; skip_connect's outputs dropped with p = 0.5 in
        // every training forward (masks from the graph's RNG). Interrupted in stage 1's second epoch.
        let c = tinySearchConfig(strategy: "espalier.strategy.pdarts/1",
                                 settings: ["stage_cells": "2,3", "stage_ops": "3,2", "stage_epochs": "2",
                                            "skip_dropout": "0.5", "skip_dropout_schedule": "constant"],
                                 ops: ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"].map { "espalier.op.\($0)/1" }, epochs: 4)
        let r = try compare(c, stopAfter: 6, rngKey: "graphRNG")
        assertBitIdentical(r, "graph's RNG")
    }

    func testGdas_ResumedMidEpoch_EndsBitIdentical() throws {
        // Gumbel noise for every gate forward from the host's RNG; interrupted in epoch 1's second step.
        var c = tinySearchConfig(strategy: "espalier.strategy.gdas/1",
                                 ops: ["max_pool_3x3", "skip_connect", "sep_conv_3x3"].map { "espalier.op.\($0)/1" }, epochs: 2)
        c.gate = "espalier.gate.gdas/1"
        let r = try compare(c, stopAfter: 2, rngKey: "contextRNG")
        assertBitIdentical(r, "host's (context) RNG")
    }
}
