// The β-DARTS, DropNAS and P-DARTS libraries through the host's adapters, without a search:
// the beta-decay loss against its formula and its gradient against finite differences (with a
// −∞ candidate left out), the λ ramp, the `lambda.schedule` method through libffi, and the
// parameter checks of all three components. Search-level behaviour (masks, the α shift, stages,
// grow, derivation) is in Tests/EspalierSearchTests/PDartsDropNASBetaSearchTests.swift.

import EspalierCore
import EspalierHost
import EspalierTestSupport
import XCTest

final class PDartsDropNASBetaTests: XCTestCase {
    static let registry: PluginRegistry = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(environment: [:]))
    let betaID = "espalier.regularizer.beta-decay/1"

    func beta(_ context: HostContext, _ settings: [String: String] = [:]) throws -> PluginRegularizer {
        XCTAssertEqual(Self.registry.failures.map(\.description), [])
        return try PluginRegularizer(try Self.registry.require(betaID, kind: .regularizer), context: context, settings: settings)
    }

    /// mean_e logsumexp(α_e) over the finite entries of each row (rows of `cols`).
    func meanLSE(_ a: [Float], cols: Int) -> Double {
        var s = 0.0, n = 0
        for r in 0..<(a.count / cols) {
            let row = a[(r * cols)..<((r + 1) * cols)].filter { $0.isFinite }.map(Double.init)
            guard let m = row.max() else { continue }
            s += m + log(row.reduce(0) { $0 + exp($1 - m) }); n += 1
        }
        return s / Double(n)
    }

    func testBetaDecay_LossIsLambdaTimesMeanLogSumExp_GradientMatchesFiniteDifferences() throws {
        let acc = MemoryAccountant()
        let r = try beta(HostContext(accountant: acc))
        XCTAssertTrue(r.hasLoss && !r.hasProximal && r.wants(.arch) && !r.wants(.gateWeights))
        try r.setValue("lambda", 2)
        let normal = try randomTensor([3, 4], acc, seed: 1, bound: 2), reduce = try randomTensor([3, 4], acc, seed: 2, bound: 2)
        reduce[5] = -.infinity   // a masked candidate: left out of the logsumexp and gets no gradient
        let gn = try Tensor.zeros([3, 4], category: .gradients, accountant: acc), gr = try Tensor.zeros([3, 4], category: .gradients, accountant: acc)
        gr.fill(0.5)   // the regularizer adds into what is there
        func targets(_ gn: Tensor?, _ gr: Tensor?) -> [RegularizerTarget] {
            [RegularizerTarget(kind: .arch, name: "arch/normal", values: [normal], grads: [gn]),
             RegularizerTarget(kind: .arch, name: "arch/reduce", values: [reduce], grads: [gr])]
        }
        let value = try r.loss(targets(gn, gr))
        XCTAssertEqual(value, 2 * (meanLSE(normal.array, cols: 4) + meanLSE(reduce.array, cols: 4)), accuracy: 1e-9)
        XCTAssertEqual(gr[5], 0.5, "a −∞ candidate gets no gradient")
        // Each row of the gradient is λ·softmax/E: it sums to λ/E = 2/3.
        for row in 0..<3 { XCTAssertEqual(gn.array[(row * 4)..<(row * 4 + 4)].reduce(0, +), 2.0 / 3, accuracy: 1e-6) }
        // Finite differences of the loss (no gradient wanted) against the analytic gradient.
        let eps: Float = 1e-3
        for (t, grad, offset) in [(normal, gn, Float(0)), (reduce, gr, Float(0.5))] {
            for i in 0..<t.count where t[i].isFinite {
                let old = t[i]
                t[i] = old + eps; let lp = try r.loss(targets(nil, nil))
                t[i] = old - eps; let lm = try r.loss(targets(nil, nil))
                t[i] = old
                let numeric = Float((lp - lm) / Double(2 * eps))
                XCTAssertEqual(grad[i] - offset, numeric, accuracy: 1e-3 + 1e-2 * abs(numeric), "element \(i)")
            }
        }
    }

    func testBetaDecay_LambdaRampsWithTheEpoch_UnlessSet_AndTheScheduleMethod() throws {
        let acc = MemoryAccountant()
        let alpha = try Tensor.from([0, 0, 0, 0, 1, 2], shape: [2, 3], accountant: acc)
        let base = meanLSE(alpha.array, cols: 3)
        func value(_ r: PluginRegularizer, epoch: Int, of total: Int) throws -> Double {
            var st = RunState()
            st.epoch = epoch; st.totalEpochs = total
            let g = try Tensor.zeros([2, 3], category: .gradients, accountant: acc)
            let v = try r.loss([RegularizerTarget(kind: .arch, name: "arch/normal", values: [alpha], grads: [g])], state: st)
            if v == 0 { XCTAssertEqual(g.array, [0, 0, 0, 0, 0, 0], "λ = 0 adds no gradient") }
            return v / base
        }
        // The authors' code: λ = 50·epoch/100.
        let code = try beta(HostContext(accountant: acc))
        XCTAssertEqual(try value(code, epoch: 0, of: 50), 0, accuracy: 1e-12)
        XCTAssertEqual(try value(code, epoch: 10, of: 50), 5, accuracy: 1e-9)
        XCTAssertEqual(try value(code, epoch: 49, of: 50), 24.5, accuracy: 1e-9)
        // ramp_epochs 0: over the run's epochs.
        let run = try beta(HostContext(accountant: acc), ["lambda": "8", "ramp_epochs": "0"])
        XCTAssertEqual(try value(run, epoch: 3, of: 4), 6, accuracy: 1e-9)
        // A set value wins from then on (what `--set lambda.schedule=…` does through set_value).
        try run.setValue("lambda", 0.25)
        XCTAssertEqual(try value(run, epoch: 0, of: 4), 0.25, accuracy: 1e-9)
        XCTAssertEqual(try value(run, epoch: 3, of: 4), 0.25, accuracy: 1e-9)
        XCTAssertThrowsError(try run.setValue("lambda", -1)) { XCTAssertTrue("\($0)".contains("lambda must be a finite number >= 0 (got -1.0)"), "\($0)") }
        XCTAssertThrowsError(try run.setValue("tau", 1)) { XCTAssertTrue("\($0)".contains("one settable value, 'lambda'"), "\($0)") }
        XCTAssertThrowsError(try beta(HostContext(accountant: acc), ["lambda": "-3"])) { XCTAssertTrue("\($0)".contains("lambda"), "\($0)") }
        // The `lambda.schedule` method, through libffi.
        let m = try XCTUnwrap(Self.registry.methods(slot: "lambda.schedule").first { $0.name == "beta-linear" })
        XCTAssertEqual(try m.schedule(step: 0, total: 1000), 0, accuracy: 1e-12)
        XCTAssertEqual(try m.schedule(step: 500, total: 1000), 12.5, accuracy: 1e-12)
        XCTAssertEqual(try m.schedule(step: 1000, total: 1000), 25, accuracy: 1e-12)
    }

    func testDropNASAndPDarts_CheckTheirParameters_AndNeedASearch() throws {
        let context = HostContext()
        func strategy(_ id: String, _ settings: [String: String]) throws -> PluginStrategy {
            try PluginStrategy(try Self.registry.require(id, kind: .strategy), context: context, settings: settings)
        }
        func error(_ id: String, _ settings: [String: String]) -> String {
            do { _ = try strategy(id, settings); return "no error" } catch { return "\(error)" }
        }
        let pdarts = "espalier.strategy.pdarts/1", dropnas = "espalier.strategy.dropnas/1"
        XCTAssertTrue(error(pdarts, ["stage_ops": "5,3"]).contains("stage_ops [5, 3] has 2 values but stage_cells [5, 11, 17] has 3"))
        XCTAssertTrue(error(pdarts, ["stage_ops": "3,5,1"]).contains("grows from stage 1 to 2"))
        XCTAssertTrue(error(pdarts, ["stage_cells": "5,x,17"]).contains("'x' is not an integer >= 1"))
        XCTAssertTrue(error(pdarts, ["skip_dropout": "0.1,1.5,0.2"]).contains("'1.5' is not a probability in [0, 1)"))
        XCTAssertTrue(error(pdarts, ["stage_epochs": "1,2"]).contains("needs one value or 3"))
        XCTAssertTrue(error(pdarts, ["stage_cells": "2", "stage_ops": "1"]).contains("skip_dropout [0.1, 0.4, 0.7] has 3 values for 1 stage(s)"))
        XCTAssertTrue(error(dropnas, ["drop_rate": "2"]).contains("drop_rate"))
        XCTAssertEqual(error(dropnas, ["drop_rate": "0.5", "warmup_epochs": "1"]), "no error")
        // Both act through the search services, which exist only inside a search.
        let s = try strategy(dropnas, [:])
        XCTAssertThrowsError(try s.planStep(RunState())) { XCTAssertTrue("\($0)".contains("runs only inside a search"), "\($0)") }
        var warm = RunState()
        warm.epoch = 0
        XCTAssertEqual(try strategy(dropnas, ["warmup_epochs": "1"]).planStep(warm).mode, .weightsOnly, "warm-up needs no search")
        let p = try strategy(pdarts, ["stage_epochs": "1"])
        XCTAssertThrowsError(try p.epochBegin(RunState())) { XCTAssertTrue("\($0)".contains("runs only inside a search"), "\($0)") }
        var st = RunState()
        st.totalEpochs = 2
        XCTAssertThrowsError(try strategy(pdarts, [:]).planStep(st)) {
            XCTAssertTrue("\($0)".contains("3 stages need at least 3 epochs, the run has 2"), "\($0)")
        }
    }
}
