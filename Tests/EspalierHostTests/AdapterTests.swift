// The host's adapters from the C ABI to the engine, on real libraries: the sample raw op and a
// composed op checked against finite differences through the host, the sample gate's weights
// and gradients, regularizers, strategies, libffi dynamic methods, and run-time selection.

import CEspalierSDK
import EspalierCore
import EspalierHost
import EspalierTestSupport
import Foundation
import XCTest

final class AdapterTests: XCTestCase {
    static var fixtureDir: String?

    func registry(_ context: HostContext) throws -> PluginRegistry {
        if Self.fixtureDir == nil {
            let dir = try PluginFixtures.tempDir()
            try PluginFixtures.build("libespalier-fixture.so", in: dir)
            Self.fixtureDir = dir
        }
        let r = PluginLoader(context: context).load(PluginSearchPath.standard(extraDirectories: [Self.fixtureDir!], environment: [:]))
        XCTAssertEqual(r.failures.map(\.description), [])
        return r
    }

    func testSampleSwishOp_ForwardAndBackward_MatchFiniteDifferencesThroughTheHost() throws {
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc, seed: 1)
        let swish = try PluginOp(try registry(context).require("org.example.op.swish/1", kind: .op), context: context,
                                 config: OpConfig(inChannels: 3, outChannels: 3), settings: ["beta_init": "0.7"], ownerPath: "cell0/edge1/swish")
        XCTAssertEqual(swish.parameters.map(\.name), ["cell0/edge1/swish/beta"])
        XCTAssertEqual(swish.parameters[0].value.array, [0.7, 0.7, 0.7])
        swish.parameters[0].value[1] = -1.3   // distinct slopes per channel
        let x = try randomTensor([2, 3, 4, 4], acc, seed: 3, bound: 2)
        // Forward against the formula.
        let g = Graph(accountant: acc)
        let y = try swish(g, g.constant(x))
        for i in [0, 17, 40, 95] {
            let c = (i / 16) % 3, b = swish.parameters[0].value[c], v = x[i]
            XCTAssertEqual(y.value[i], v / (1 + exp(-b * v)), accuracy: 1e-5)
        }
        try GradCheck().check("swish dX", inputs: [x]) { g, v in try swish(g, v[0]) }
        try checkParameterGradient("swish dβ", parameter: swish.parameters[0], acc: acc) { g in try swish(g, g.constant(x)) }
        XCTAssertGreaterThan(acc.ownerTable().first { $0.owner == "cell0/edge1/swish/beta" }?.current.total ?? 0, 0, "β is counted by the accountant")
        // Stride 2 (reduction edges): every second row and column.
        let swish2 = try PluginOp(try registry(context).require("org.example.op.swish/1", kind: .op), context: context,
                                  config: OpConfig(inChannels: 3, outChannels: 3, stride: 2), ownerPath: "cell1/edge0/swish")
        let x5 = try randomTensor([2, 3, 5, 4], acc, seed: 4, bound: 2)
        let g2 = Graph(accountant: acc)
        let y2 = try swish2(g2, g2.constant(x5))
        XCTAssertEqual(y2.shape, [2, 3, 3, 2])
        XCTAssertEqual(y2.value[3], x5[2 * 4 + 2] / (1 + exp(-x5[2 * 4 + 2])), accuracy: 1e-6)   // (0,0,1,1) ← x (0,0,2,2)
        try GradCheck().check("swish stride 2 dX", inputs: [x5]) { g, v in try swish2(g, v[0]) }
        try checkParameterGradient("swish stride 2 dβ", parameter: swish2.parameters[0], acc: acc) { g in try swish2(g, g.constant(x5)) }
    }

    func testComposedOp_BuiltFromHostPrimitives_IsDifferentiatedByTheHost() throws {
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc, seed: 2)
        let op = try PluginOp(try registry(context).require("org.fixture.op.relu-conv/1"), context: context,
                              config: OpConfig(inChannels: 3, outChannels: 2), ownerPath: "cell0/edge0/relu-conv")
        XCTAssertTrue(op.isComposed)
        let x = try randomTensor([2, 3, 3, 3], acc, seed: 4)
        for i in 0..<x.count where abs(x[i]) < 0.05 { x[i] = 0.4 }
        try GradCheck().check("relu-conv dX", inputs: [x]) { g, v in try op(g, v[0]) }
        try checkParameterGradient("relu-conv dW", parameter: op.parameters[0], acc: acc) { g in try op(g, g.constant(x)) }
    }

    func testDeclareParam_OutsideAnOpsCreate_IsRefused_NotKeptAsADanglingHandle() throws {
        // Before: a gate's declare_param returned ES_OK and the host dropped the parameter when create returned.
        let dir = try PluginFixtures.tempDir("declares")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try PluginFixtures.build("libespalier-declares.so", in: dir, defines: ["FIX_GATE_DECLARES"])
        let context = HostContext(accountant: MemoryAccountant())
        let reg = PluginLoader(context: context).load(PluginSearchPath(directories: [dir]))
        XCTAssertThrowsError(try PluginGate(try reg.require("org.fixture.gate.linear/1"), context: context, granularity: .channels,
                                            rows: 2, cols: 1, settings: [:], ownerPath: "gate/channel")) { e in
            XCTAssertTrue("\(e)".contains("declare_param is only allowed inside an op's create"), "\(e)")
        }
        // An op's create still declares its parameters.
        let op = try PluginOp(try reg.require("org.fixture.op.relu-conv/1"), context: context, config: OpConfig(inChannels: 2, outChannels: 2), ownerPath: "o")
        XCTAssertEqual(op.parameters.count, 1)
    }

    func testComposedOp_UsesTheRunsChannelGate_AndMergedOpAppliesMixingWeights() throws {
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc)
        let reg = try registry(context)
        context.gatesByRole["channel"] = try PluginGate(try reg.require("org.fixture.gate.linear/1"), context: context, granularity: .channels,
                                                        rows: 2, cols: 1, settings: ["scale": "3"], ownerPath: "gate/channel")
        let masked = try PluginOp(try reg.require("org.fixture.op.masked-relu/1"), context: context, config: OpConfig(inChannels: 2, outChannels: 2), ownerPath: "m")
        let x = try randomTensor([1, 2, 2, 2], acc, seed: 8)
        for i in 0..<x.count where abs(x[i]) < 0.05 { x[i] = 0.5 }
        let g = Graph(accountant: acc)
        let y = try masked(g, g.constant(x))
        for i in 0..<x.count { XCTAssertEqual(y.value[i], max(x[i], 0) * 1.5, accuracy: 1e-6) }   // gate: 3 · 0.5
        try GradCheck().check("masked dX", inputs: [x]) { g, v in try masked(g, v[0]) }
        try checkParameterGradient("masked d(logits)", parameter: masked.parameters[0], acc: acc) { g in try masked(g, g.constant(x)) }

        let merged = try PluginOp(try reg.require("org.fixture.op.merged/1"), context: context, config: OpConfig(inChannels: 2, outChannels: 2), ownerPath: "mm")
        XCTAssertTrue(merged.takesMixingWeights && !masked.takesMixingWeights)
        let w = try Tensor.from([0.25, 2], shape: [2], accountant: acc)
        try GradCheck().check("merged", inputs: [x, w]) { g, v in try merged(g, v[0], mixingWeights: v[1]) }
        XCTAssertThrowsError(try masked(g, g.constant(x), mixingWeights: g.constant(w))) { XCTAssertTrue("\($0)".contains("no build_mixed")) }
        context.gatesByRole = [:]
        XCTAssertThrowsError(try masked(g, g.constant(x))) { XCTAssertTrue("\($0)".contains("no gate for role 'channel'")) }
    }

    func testRawOp_DryRunAllocatesTheSameAndComputesNothing() throws {
        func step(_ acc: MemoryAccountant) throws -> Int {
            let context = HostContext(accountant: acc, seed: 1)
            let reg = try registry(context)
            let op = try PluginOp(try reg.require("org.example.op.swish/1"), context: context, config: OpConfig(inChannels: 4, outChannels: 4), ownerPath: "swish")
            let g = Graph(accountant: acc)
            let x = try Tensor(shape: [2, 4, 5, 5], category: .data, accountant: acc)
            x.fill(0.5)
            let y = try op(g, g.leaf(x))
            try g.backward(try g.mean(y))
            return acc.peakTotal
        }
        let dry = MemoryAccountant(mode: .dryRun), real = MemoryAccountant()
        XCTAssertEqual(try step(dry), try step(real))
    }

    func testSampleSparsemaxGate_WeightsSparseAndGradientMatchesFiniteDifferences() throws {
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc, seed: 1)
        let gate = try PluginGate(try registry(context).require("org.example.gate.sparsemax/1", kind: .gate), context: context,
                                  granularity: .ops, rows: 2, cols: 3, ownerPath: "arch/normal")
        XCTAssertTrue(gate.isHard)
        let logits = try Tensor.from([1, 0.5, -1, 0.2, 0.1, 0.0], shape: [2, 3], accountant: acc)
        let g = Graph(accountant: acc)
        let (w, active) = try gate(g, g.leaf(logits))
        assertClose(Array(w.value.array[0..<3]), [0.75, 0.25, 0], tol: 1e-6, "sparsemax([1, .5, -1])")
        XCTAssertEqual(Array(active[0..<3]), [1, 1, 0], "a zero weight marks its candidate inactive")
        XCTAssertEqual(w.value.array[3...].reduce(0, +), 1, accuracy: 1e-6)
        // Gradient on a point away from the support's boundary.
        try GradCheck(eps: 1e-3).check("sparsemax", inputs: [logits]) { g, v in try gate(g, v[0]).weights }
    }

    func testBuiltInSoftmaxGate_AndItsScheduleThroughLibffi() throws {
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc, seed: 1)
        let reg = try registry(context)
        let gate = try PluginGate(try reg.require("espalier.gate.softmax/1", kind: .gate), context: context, granularity: .ops,
                                  rows: 1, cols: 3, ownerPath: "arch/normal")
        let logits = try Tensor.from([1, 2, 3], shape: [1, 3], accountant: acc)
        let g = Graph(accountant: acc)
        let w = try gate(g, g.leaf(logits)).weights.value.array
        let e = [1.0, 2, 3].map { exp($0) }, s = e.reduce(0, +)
        assertClose(w, e.map { Float($0 / s) }, tol: 1e-6)
        try GradCheck(eps: 1e-3).check("softmax gate", inputs: [logits]) { g, v in try gate(g, v[0]).weights }
        // An edge whose every candidate is masked (−∞) gets weights 0, not NaN.
        let masked = try Tensor.from([-.infinity, -.infinity, -.infinity], shape: [1, 3], accountant: acc)
        XCTAssertEqual(try gate(g, g.leaf(masked)).weights.value.array, [0, 0, 0])
        let schedule = try XCTUnwrap(reg.methods(slot: "tau.schedule").first { $0.name == "linear-decay" })
        XCTAssertEqual(try schedule.schedule(step: 0, total: 100), 10, accuracy: 1e-12)
        XCTAssertEqual(try schedule.schedule(step: 50, total: 100), 5.05, accuracy: 1e-12)
    }

    func testDynamicMethods_CalledThroughLibffiWithDeclaredTypes() throws {
        let reg = try registry(HostContext())
        func method(_ slot: String) throws -> DynamicMethod { try XCTUnwrap(reg.methods(slot: slot).first) }
        XCTAssertEqual(try method("fixture.triple").call([.int(14)]), .int(42))
        XCTAssertEqual(try method("fixture.mix").call([.double(1.5), .int(4), .double(0.25)]), .double(6.25))
        XCTAssertEqual(try method("fixture.greet").call([.string("host")]), .string("hello host"))
        XCTAssertEqual(try method("beta.warmup").schedule(step: 5, total: 100), 0.5, accuracy: 1e-12)
        XCTAssertThrowsError(try method("fixture.triple").call([])) { XCTAssertTrue("\($0)".contains("takes 1 argument")) }
        XCTAssertThrowsError(try method("fixture.triple").call([.int(1 << 40)])) { XCTAssertTrue("\($0)".contains("does not fit int32")) }
        XCTAssertThrowsError(try method("fixture.greet").call([.int(1)])) { XCTAssertTrue("\($0)".contains("is not a string")) }
        XCTAssertThrowsError(try FFISignature(parsing: "double(int64")) { XCTAssertTrue("\($0)".contains("not of the form")) }
        XCTAssertThrowsError(try FFISignature(parsing: "complex(int64)")) { XCTAssertTrue("\($0)".contains("unknown return type 'complex'")) }
        XCTAssertEqual(try FFISignature(parsing: "void()").description, "void()")
    }

    func testGateAdapter_ActiveMaskSetValueAndStraightThroughBackward() throws {
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc)
        let gate = try PluginGate(try registry(context).require("org.fixture.gate.linear/1"), context: context, granularity: .ops,
                                  rows: 1, cols: 3, settings: ["scale": "3"], ownerPath: "arch")
        let logits = try Tensor.from([1, 0, -2], shape: [1, 3], accountant: acc)
        let g = Graph(accountant: acc)
        let (w, active) = try gate(g, g.leaf(logits))
        XCTAssertEqual(w.value.array, [3, 0, -6])
        XCTAssertEqual(active, [1, 0, 1])
        try gate.setValue("scale", 0.5)
        XCTAssertEqual(try gate(g, g.leaf(logits)).weights.value.array, [0.5, 0, -1])
        XCTAssertThrowsError(try gate.setValue("tau", 1)) { XCTAssertTrue("\($0)".contains("unsupported")) }
        XCTAssertThrowsError(try PluginGate(try registry(context).require("org.fixture.gate.linear/1"), context: context,
                                            granularity: .inputs, rows: 4, cols: 1, ownerPath: "x")) {
            XCTAssertTrue("\($0)".contains("does not support"))
        }
    }

    func testRegularizer_LossGradientAndProximalStep() throws {
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc)
        let r = try PluginRegularizer(try registry(context).require("org.fixture.regularizer.l2/1"), context: context, settings: ["lambda": "2"])
        XCTAssertTrue(r.hasLoss && r.hasProximal && r.wants(.arch) && !r.wants(.gateWeights))
        let v = try Tensor.from([1, -2, 3], shape: [3], accountant: acc)
        let grad = try Tensor.zeros([3], category: .gradients, accountant: acc)
        let target = RegularizerTarget(kind: .arch, name: "arch/normal", values: [v], grads: [grad])
        XCTAssertEqual(try r.loss([target]), 14, accuracy: 1e-9)   // λ/2·Σv² = 1·14
        XCTAssertEqual(grad.array, [2, -4, 6])
        try r.proximal([target], learningRate: 0.5)
        XCTAssertEqual(v.array, [0.5, -1, 1.5])
    }

    func testStrategy_PlanHooksAndDerive() throws {
        let context = HostContext()
        let s = try PluginStrategy(try registry(context).require("org.fixture.strategy.warmup/1"), context: context, settings: ["warmup": "3", "epochs": "2"])
        var st = RunState()
        st.step = 2
        XCTAssertEqual(try s.planStep(st).mode, .weightsOnly)
        st.step = 3
        XCTAssertEqual(try s.planStep(st).mode, .bilevel)
        st.epoch = 0
        XCTAssertFalse(try s.epochEnd(st, metrics: EpochMetrics()))
        st.epoch = 1
        XCTAssertTrue(try s.epochEnd(st, metrics: EpochMetrics()))
        XCTAssertEqual(try s.derive(st), "{\"fixture\":true}")
        XCTAssertThrowsError(try PluginStrategy(try registry(context).require("org.fixture.strategy.warmup/1"), context: context, settings: ["warmup": "-1"])) {
            XCTAssertTrue("\($0)".contains("below the minimum"))
        }
    }

    func testSelection_ConfigFileThenFlags_ErrorsListWhatIsAvailable() throws {
        let reg = try registry(HostContext())
        let dir = try PluginFixtures.tempDir("config")
        let yaml = dir + "/run.yaml"
        try """
        strategy: org.fixture.strategy.warmup/1
        gate: espalier.gate.softmax/1
        ops: [org.example.op.swish/1, org.fixture.op.relu-conv/1]
        set:
          gate.tau: 2
          strategy.warmup: 5
          swish.beta_init: 0.25
          tau.schedule: linear-decay
        """.write(toFile: yaml, atomically: true, encoding: .utf8)
        let file = try SelectionRequest.load(file: yaml)
        let flags = SelectionRequest(set: try SelectionRequest.settings(fromFlags: ["strategy.warmup=7", "strategy.order=second"]))
        let s = try Selection.resolve(file.overridden(by: flags), registry: reg)
        XCTAssertEqual(s.strategy?.settings, ["warmup": "7", "order": "second"], "flags override the file")
        XCTAssertEqual(s.gate?.settings, ["tau": "2"])
        XCTAssertEqual(s.ops.map(\.settings), [["beta_init": "0.25"], [:]])
        XCTAssertEqual(s.methods["tau.schedule"]?.name, "linear-decay")

        func error(_ r: SelectionRequest) -> String {
            do { _ = try Selection.resolve(r, registry: reg); return "no error" } catch { return "\(error)" }
        }
        XCTAssertTrue(error(SelectionRequest(gate: "espalier.gate.nope/1")).contains("available: "))
        XCTAssertTrue(error(SelectionRequest(gate: "espalier.gate.softmax/1", set: ["gate.temperature": "1"])).contains("its parameters: tau"))
        XCTAssertTrue(error(SelectionRequest(gate: "espalier.gate.softmax/1", set: ["gate.tau": "hot"])).contains("'hot' is not a finite number"))
        XCTAssertTrue(error(SelectionRequest(set: ["tau.schedule": "cubic"])).contains("available: "))
        XCTAssertTrue(error(SelectionRequest(set: ["nobody.x": "1"])).contains("no selected component"))
        XCTAssertThrowsError(try SelectionRequest.settings(fromFlags: ["novalue"]))
        try "strategy: [1, 2".write(toFile: dir + "/bad.yaml", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try SelectionRequest.load(file: dir + "/bad.yaml")) { XCTAssertTrue("\($0)".contains("not valid YAML")) }
        try "{\"stratgy\": \"x\"}".write(toFile: dir + "/typo.json", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try SelectionRequest.load(file: dir + "/typo.json")) { XCTAssertTrue("\($0)".contains("unknown field 'stratgy'")) }
    }
}
