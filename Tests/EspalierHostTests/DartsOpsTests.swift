// The built-in DARTS library (libespalier-darts.so), loaded through the normal discovery path:
// every candidate op at stride 1 and 2, in the search (affine 0) and evaluation (affine 1)
// networks, checked through the ABI — output shapes, forward against the DARTS definition
// written with the engine's own ops, input and parameter gradients against finite differences
// (training mode) — plus the op-specific semantics (zeros, identity, BN after pools only in
// search, FactorizedReduce alignment), the config refusals, and the strategy's plan.

import CEspalierSDK
import EspalierCore
import EspalierHost
import EspalierTestSupport
import XCTest

final class DartsOpsTests: XCTestCase {
    static let ops = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
                      "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]

    func registry(_ context: HostContext) throws -> PluginRegistry {
        let r = PluginLoader(context: context).load(PluginSearchPath.standard(environment: [:]))
        XCTAssertEqual(r.failures.filter { $0.path.contains("darts") }.map(\.description), [])
        XCTAssertNotNil(r.libraries.first { $0.name == "espalier.darts" }, "libespalier-darts.so is built beside the test bundle")
        return r
    }

    func makeOp(_ name: String, _ context: HostContext, _ reg: PluginRegistry, channels: Int = 4, outChannels: Int? = nil,
                stride: Int = 1, affine: Bool = false) throws -> PluginOp {
        try PluginOp(try reg.require("espalier.op.\(name)/1", kind: .op), context: context,
                     config: OpConfig(inChannels: channels, outChannels: outChannels ?? channels, stride: stride, affine: affine),
                     ownerPath: "cell0/edge0/\(name)")
    }

    /// (N, C, H, W) filled with a random permutation of distinct values spaced 0.05 apart, none
    /// within 0.025 of 0: no ReLU kink and no max-pool tie is within a finite-difference step.
    func distinctInput(_ shape: [Int], _ acc: MemoryAccountant, seed: UInt64) throws -> Tensor {
        let n = shape.reduce(1, *)
        var rng = RNG(seed: seed)
        let perm = rng.permutation(n)
        return try Tensor.from(perm.map { (Float($0) - Float(n) / 2 + 0.5) * 0.05 }, shape: shape, accountant: acc)
    }

    func parameter(_ op: PluginOp, _ suffix: String) throws -> Parameter {
        try XCTUnwrap(op.parameters.first { $0.name.hasSuffix("/" + suffix) }, "\(op.ownerPath) has no parameter \(suffix)")
    }

    /// Input and parameter gradients of an op with a ReLU inside (sep_conv: ReLU after the first
    /// BN, whose outputs straddle 0, so some finite-difference steps cross a kink). Where the
    /// forward and backward one-sided slopes disagree, a kink lies within the step and the element
    /// is skipped; everywhere else the analytic gradient must match the central difference. At
    /// most a third of a tensor's elements may be skipped (the seeded runs skip well under that).
    func checkGradientsAwayFromKinks(_ name: String, op: PluginOp, input: Tensor, acc: MemoryAccountant,
                                     file: StaticString = #filePath, line: UInt = #line) throws {
        var rng = RNG(seed: 5)
        let g0 = Graph(accountant: acc)
        let xv = g0.leaf(input)
        let y0 = try op(g0, xv)
        let r = try Tensor(shape: y0.shape, category: .workspace, accountant: acc)
        r.fillUniform(bound: 1, rng: &rng)
        for p in op.parameters { p.zeroGrad() }
        try g0.backward(y0, gradient: try r.copy())
        var targets: [(String, Tensor, [Float])] = [("dX", input, try XCTUnwrap(g0.gradient(of: xv)).array)]
        for p in op.parameters { targets.append(("d" + p.name, p.value, p.grad!.array)) }
        func loss() throws -> Double {
            let g = Graph(accountant: acc)
            let y = try g.noGrad { try op(g, g.constant(input)) }
            return (0..<y.value.count).reduce(0.0) { $0 + Double(y.value[$1]) * Double(r[$1]) }
        }
        let f0 = try loss(), h: Float = 1e-3
        func tolerance(_ a: Float, _ b: Float) -> Float { 2e-3 + 2e-2 * max(abs(a), abs(b)) }
        for (what, t, analytic) in targets {
            var skipped = 0
            for i in 0..<t.count {
                let old = t[i]
                t[i] = old + h; let fp = try loss()
                t[i] = old - h; let fm = try loss()
                t[i] = old
                let forward = Float((fp - f0) / Double(h)), backward = Float((f0 - fm) / Double(h))
                let central = Float((fp - fm) / Double(2 * h))
                // One-sided slopes that disagree: a kink lies within the step.
                if abs(forward - backward) > tolerance(forward, backward) { skipped += 1; continue }
                if abs(analytic[i] - central) > tolerance(analytic[i], central) {
                    XCTFail("\(name) \(what)[\(i)]: analytic \(analytic[i]) vs numeric \(central)", file: file, line: line)
                    return
                }
            }
            XCTAssertLessThanOrEqual(skipped * 3, t.count, "\(name) \(what): \(skipped) of \(t.count) elements near a kink", file: file, line: line)
        }
    }

    /// The DARTS definition (operations.py / supernets.py) written with the engine's ops and the
    /// plugin op's own parameters.
    func reference(_ name: String, _ op: PluginOp, _ g: Graph, _ x: Variable, stride s: Int, affine: Bool) throws -> Variable {
        func w(_ suffix: String) throws -> Variable { g.constant(try parameter(op, suffix).value) }
        func bn(_ y: Variable, _ prefix: String) throws -> Variable {
            try g.batchNorm(y, gamma: affine ? try w(prefix + ".weight") : nil, beta: affine ? try w(prefix + ".bias") : nil,
                            runningMean: nil, runningVar: nil, momentum: 0.1, eps: 1e-5)
        }
        let c = x.shape[1]
        switch name {
        case "none":
            return try g.zeros(like: x, stride: s)
        case "max_pool_3x3":
            let y = try g.maxPool2d(x, kernel: 3, stride: s, padding: 1)
            return affine ? y : try g.batchNorm(y, gamma: nil, beta: nil, runningMean: nil, runningVar: nil)
        case "avg_pool_3x3":
            let y = try g.avgPool2d(x, kernel: 3, stride: s, padding: 1, countIncludePad: false)
            return affine ? y : try g.batchNorm(y, gamma: nil, beta: nil, runningMean: nil, runningVar: nil)
        case "skip_connect":
            guard s == 2 else { return x }
            let r = try g.relu(x)
            let a = try g.conv2d(r, try w("conv_1.weight"), stride: 2)
            let b = try g.conv2d(try g.crop(r, top: 1, left: 1), try w("conv_2.weight"), stride: 2)
            return try bn(try g.concatChannels([a, b]), "bn")
        case "sep_conv_3x3", "sep_conv_5x5":
            let k = name == "sep_conv_3x3" ? 3 : 5
            var y = try g.conv2d(try g.relu(x), try w("dw1.weight"), stride: s, padding: k / 2, groups: c)
            y = try bn(try g.conv2d(y, try w("pw1.weight")), "bn1")
            y = try g.conv2d(try g.relu(y), try w("dw2.weight"), stride: 1, padding: k / 2, groups: c)
            return try bn(try g.conv2d(y, try w("pw2.weight")), "bn2")
        case "dil_conv_3x3", "dil_conv_5x5":
            let k = name == "dil_conv_3x3" ? 3 : 5
            let y = try g.conv2d(try g.relu(x), try w("dw.weight"), stride: s, padding: k == 3 ? 2 : 4, dilation: 2, groups: c)
            return try bn(try g.conv2d(y, try w("pw.weight")), "bn")
        default:
            // A failure, not a skip: an op without a reference would otherwise leave every combination unchecked.
            throw CheckFailed("no reference for '\(name)': add its DARTS definition to DartsOpsTests.reference")
        }
    }

    /// Learnable parameter shapes of each op for C channels, in declaration order (PyTorch's).
    func expectedParameters(_ name: String, c: Int, stride: Int, affine: Bool) -> [String: [Int]] {
        var p: [String: [Int]] = [:]
        func bn(_ prefix: String) { if affine { p[prefix + ".weight"] = [c]; p[prefix + ".bias"] = [c] } }
        switch name {
        case "skip_connect" where stride == 2:
            p["conv_1.weight"] = [c / 2, c, 1, 1]; p["conv_2.weight"] = [c / 2, c, 1, 1]; bn("bn")
        case "sep_conv_3x3", "sep_conv_5x5":
            let k = name == "sep_conv_3x3" ? 3 : 5
            p["dw1.weight"] = [c, 1, k, k]; p["pw1.weight"] = [c, c, 1, 1]; bn("bn1")
            p["dw2.weight"] = [c, 1, k, k]; p["pw2.weight"] = [c, c, 1, 1]; bn("bn2")
        case "dil_conv_3x3", "dil_conv_5x5":
            let k = name == "dil_conv_3x3" ? 3 : 5
            p["dw.weight"] = [c, 1, k, k]; p["pw.weight"] = [c, c, 1, 1]; bn("bn")
        default: break
        }
        return p
    }

    /// BatchNorm layers with running statistics (buffers: running_mean zeros, running_var ones).
    func expectedBatchNorms(_ name: String, stride: Int, affine: Bool) -> Int {
        switch name {
        case "max_pool_3x3", "avg_pool_3x3": return affine ? 0 : 1
        case "skip_connect": return stride == 2 ? 1 : 0
        case "sep_conv_3x3", "sep_conv_5x5": return 2
        case "dil_conv_3x3", "dil_conv_5x5": return 1
        default: return 0
        }
    }

    // MARK: - Every op, every config

    func testEveryOp_ShapesParametersForwardAndGradients_Stride1And2_AffineOnAndOff() throws {
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc, seed: 3)
        let reg = try registry(context)
        let c = 4
        for name in Self.ops {
            for stride in [1, 2] {
                for affine in [false, true] {
                    let what = "\(name) stride \(stride) affine \(affine)"
                    let op = try makeOp(name, context, reg, channels: c, stride: stride, affine: affine)
                    XCTAssertTrue(op.isComposed, what)

                    // Parameters: names, shapes, initial values; BN buffers.
                    let expected = expectedParameters(name, c: c, stride: stride, affine: affine)
                    XCTAssertEqual(op.parameters.count, expected.count, "\(what): \(op.parameters.map(\.name))")
                    for (suffix, shape) in expected {
                        let p = try parameter(op, suffix)
                        XCTAssertEqual(p.shape, shape, "\(what): \(suffix)")
                        XCTAssertTrue(p.decay, "\(what): \(suffix) keeps weight decay (as DARTS)")
                        if suffix.hasSuffix(".weight") && shape.count == 4 {
                            let bound = 1 / Float(shape[1] * shape[2] * shape[3]).squareRoot()
                            XCTAssertTrue(p.value.array.allSatisfy { abs($0) <= bound }, "\(what): \(suffix) ~ U(±1/√fan-in)")
                            XCTAssertGreaterThan(p.value.array.map(abs).max() ?? 0, 0, "\(what): \(suffix) is initialised")
                        } else if suffix.hasSuffix(".weight") {
                            XCTAssertEqual(p.value.array, Array(repeating: 1, count: c), "\(what): γ = 1")
                        } else {
                            XCTAssertEqual(p.value.array, Array(repeating: 0, count: c), "\(what): β = 0")
                        }
                    }
                    let bns = expectedBatchNorms(name, stride: stride, affine: affine)
                    XCTAssertEqual(op.buffers.count, 2 * bns, what)
                    for (i, b) in op.buffers.enumerated() {
                        XCTAssertEqual(b.array, Array(repeating: i % 2 == 0 ? 0 : 1, count: c), "\(what): running_mean 0, running_var 1")
                    }

                    // Output shape and forward against the DARTS definition (training mode).
                    let x = try distinctInput([2, c, 6, 6], acc, seed: UInt64(7 + stride))
                    let g = Graph(accountant: acc)
                    let y = try op(g, g.constant(x))
                    XCTAssertEqual(y.shape, [2, c, 6 / stride, 6 / stride], what)
                    let ref = try g.noGrad { try reference(name, op, g, g.constant(x), stride: stride, affine: affine) }
                    assertClose(y.value.array, ref.value.array, tol: 1e-5, what)

                    // Gradients through the ABI: the input, then every learnable parameter.
                    if name.hasPrefix("sep_conv") {
                        // The ReLU between the two halves acts on BN outputs spread around 0: small
                        // inputs (|x| in [0.05, 1]) and small steps keep kink crossings rare.
                        let small = try randomTensor([2, c, 4, 4], acc, seed: UInt64(17 + stride))
                        for i in 0..<small.count where abs(small[i]) < 0.05 { small[i] = small[i] < 0 ? -0.05 - small[i] : 0.05 + small[i] }
                        try checkGradientsAwayFromKinks(what, op: op, input: small, acc: acc)
                    } else {
                        try GradCheck().check("\(what) dX", inputs: [x]) { g, v in try op(g, v[0]) }
                        for p in op.parameters {
                            try checkParameterGradient("\(what) d\(p.name)", parameter: p, acc: acc) { g in try op(g, g.constant(x)) }
                        }
                    }
                }
            }
        }
    }

    func testOutputShapes_StrideTwoHalvesOddAndEvenSides() throws {
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc, seed: 1)
        let reg = try registry(context)
        for name in Self.ops {
            for (h, w) in [(8, 8), (7, 5)] {
                for stride in [1, 2] where !(name == "skip_connect" && stride == 2 && h % 2 == 1) {
                    let op = try makeOp(name, context, reg, channels: 2, stride: stride, affine: true)
                    let x = try distinctInput([1, 2, h, w], acc, seed: 2)
                    let g = Graph(accountant: acc)
                    let y = try op(g, g.constant(x))
                    XCTAssertEqual(y.shape, [1, 2, (h + stride - 1) / stride, (w + stride - 1) / stride], "\(name) stride \(stride) on \(h)×\(w)")
                }
            }
        }
    }

    // MARK: - Op semantics

    func testNone_OutputsZeros_AndPassesNoGradient() throws {
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc)
        let reg = try registry(context)
        for stride in [1, 2] {
            let op = try makeOp("none", context, reg, stride: stride)
            XCTAssertTrue(op.parameters.isEmpty && op.buffers.isEmpty)
            let x = try distinctInput([2, 4, 5, 5], acc, seed: 1)
            let g = Graph(accountant: acc)
            let y = try op(g, g.leaf(x))
            XCTAssertEqual(y.shape, [2, 4, stride == 1 ? 5 : 3, stride == 1 ? 5 : 3])
            XCTAssertTrue(y.value.array.allSatisfy { $0 == 0 })
            XCTAssertFalse(y.requiresGrad, "zeros do not depend on the input")
        }
    }

    func testSkipConnect_Stride1IsTheInputItself() throws {
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc)
        let reg = try registry(context)
        for affine in [false, true] {
            let op = try makeOp("skip_connect", context, reg, channels: 3, stride: 1, affine: affine)
            XCTAssertTrue(op.parameters.isEmpty && op.buffers.isEmpty, "identity has no parameters")
            let x = try distinctInput([2, 3, 4, 4], acc, seed: 4)
            let g = Graph(accountant: acc)
            let y = try op(g, g.constant(x))
            XCTAssertEqual(y.value.storage.data, x.storage.data, "the input value itself, not a copy")
            XCTAssertEqual(y.value.array, x.array)
        }
    }

    func testSkipConnect_FactorizedReduce_OnCIFARSizes_AndItsRefusals() throws {
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc, seed: 2)
        let reg = try registry(context)
        // 28×28 → 14×14 (the shifted branch sees 27×27, which stride 2 also takes to 14×14).
        let op = try makeOp("skip_connect", context, reg, channels: 6, stride: 2, affine: false)
        let x = try randomTensor([2, 6, 28, 28], acc, seed: 3)
        let g = Graph(accountant: acc)
        let y = try op(g, g.constant(x))
        XCTAssertEqual(y.shape, [2, 6, 14, 14])
        let ref = try g.noGrad { try reference("skip_connect", op, g, g.constant(x), stride: 2, affine: false) }
        assertClose(y.value.array, ref.value.array, tol: 1e-5, "FactorizedReduce 28×28")
        XCTAssertThrowsError(try makeOp("skip_connect", context, reg, channels: 5, stride: 2)) {
            XCTAssertTrue("\($0)".contains("even channel count"), "\($0)")
        }
        XCTAssertNoThrow(try makeOp("skip_connect", context, reg, channels: 5, stride: 1), "odd C is fine for the identity")
        let odd = try randomTensor([1, 6, 7, 7], acc, seed: 3)
        XCTAssertThrowsError(try op(g, g.constant(odd))) { XCTAssertTrue("\($0)".contains("even H and W"), "\($0)") }
    }

    func testSkipConnect_FactorizedReduce_SecondHalfReadsTheShiftedPixels() throws {
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc, seed: 2)
        let reg = try registry(context)
        let op = try makeOp("skip_connect", context, reg, channels: 2, stride: 2, affine: true)
        // conv_1 and conv_2 copy channel 0; input channel 0 = 1 + row·10 + col, positive (ReLU = id).
        for p in op.parameters where p.name.hasSuffix("conv_1.weight") || p.name.hasSuffix("conv_2.weight") {
            p.value.fill(0); p.value[0] = 1
        }
        let x = try Tensor.zeros([1, 2, 4, 4], category: .data, accountant: acc)
        for r in 0..<4 { for col in 0..<4 { x[r * 4 + col] = Float(1 + r * 10 + col) } }
        let g = Graph(accountant: acc)
        g.training = false  // running stats (0, 1): BN is (almost) the identity
        let y = try op(g, g.constant(x))
        let scale = 1 / (1 + 1e-5 as Float).squareRoot()
        assertClose(Array(y.value.array[0..<4]), [1, 3, 21, 23].map { $0 * scale }, tol: 1e-6, "conv_1 reads x[0::2, 0::2]")
        assertClose(Array(y.value.array[4..<8]), [12, 14, 32, 34].map { $0 * scale }, tol: 1e-6, "conv_2 reads x[1::2, 1::2]")
    }

    func testPools_SearchNetworkAddsBatchNorm_EvaluationNetworkDoesNot() throws {
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc)
        let reg = try registry(context)
        for name in ["max_pool_3x3", "avg_pool_3x3"] {
            for stride in [1, 2] {
                let x = try distinctInput([2, 3, 6, 6], acc, seed: 11)
                // Search (affine 0): per-channel zero mean and unit (biased) variance in training mode.
                let search = try makeOp(name, context, reg, channels: 3, stride: stride, affine: false)
                XCTAssertTrue(search.parameters.isEmpty)
                XCTAssertEqual(search.buffers.count, 2, "\(name): BN(affine=False) running statistics")
                let g = Graph(accountant: acc)
                let y = try search(g, g.constant(x))
                let (n, c, hw) = (y.shape[0], y.shape[1], y.shape[2] * y.shape[3])
                for ch in 0..<c {
                    var values: [Double] = []
                    for i in 0..<n { for j in 0..<hw { values.append(Double(y.value[(i * c + ch) * hw + j])) } }
                    let mean = values.reduce(0, +) / Double(values.count)
                    let variance = values.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(values.count)
                    XCTAssertEqual(mean, 0, accuracy: 1e-5, "\(name) stride \(stride) channel \(ch) mean")
                    XCTAssertEqual(variance, 1, accuracy: 1e-3, "\(name) stride \(stride) channel \(ch) variance")
                }
                XCTAssertNotEqual(search.buffers[0].array, [0, 0, 0], "training mode updates the running mean")

                // Evaluation (affine 1): the bare pool.
                let eval = try makeOp(name, context, reg, channels: 3, stride: stride, affine: true)
                XCTAssertTrue(eval.parameters.isEmpty && eval.buffers.isEmpty)
                let ye = try eval(g, g.constant(x))
                let pooled = name == "max_pool_3x3" ? try g.maxPool2d(g.constant(x), kernel: 3, stride: stride, padding: 1)
                    : try g.avgPool2d(g.constant(x), kernel: 3, stride: stride, padding: 1, countIncludePad: false)
                XCTAssertEqual(ye.value.array, pooled.value.array, "\(name) stride \(stride): no BN")
            }
        }
        // count_include_pad=False: a constant input stays constant at the borders and corners.
        let avg = try makeOp("avg_pool_3x3", context, reg, channels: 1, stride: 2, affine: true)
        let three = try Tensor.filled([1, 1, 5, 5], value: 3, category: .data, accountant: acc)
        let g = Graph(accountant: acc)
        XCTAssertTrue(try avg(g, g.constant(three)).value.array.allSatisfy { abs($0 - 3) < 1e-6 })
        // Max pooling pads with −∞: a negative input keeps its own maxima at the borders.
        let maxOp = try makeOp("max_pool_3x3", context, reg, channels: 1, stride: 1, affine: true)
        let neg = try Tensor.filled([1, 1, 3, 3], value: -2, category: .data, accountant: acc)
        XCTAssertTrue(try maxOp(g, g.constant(neg)).value.array.allSatisfy { $0 == -2 })
    }

    func testConfigRefusals_NameTheProblem() throws {
        let context = HostContext()
        let reg = try registry(context)
        for name in Self.ops {
            XCTAssertThrowsError(try makeOp(name, context, reg, channels: 4, outChannels: 8)) {
                XCTAssertTrue("\($0)".contains("C_in == C_out"), "\(name): \($0)")
            }
            XCTAssertThrowsError(try makeOp(name, context, reg, channels: 4, stride: 3)) {
                XCTAssertTrue("\($0)".contains("stride must be 1 or 2"), "\(name): \($0)")
            }
            let op = try makeOp(name, context, reg, channels: 4)
            let g = Graph(accountant: context.accountant)
            let x = try randomTensor([1, 3, 4, 4], context.accountant, seed: 1)
            XCTAssertThrowsError(try op(g, g.constant(x))) { XCTAssertTrue("\($0)".contains("expects input (N, 4, H, W)"), "\(name): \($0)") }
        }
    }

    func testDryRun_AllocatesLikeARealStep() throws {
        func step(_ acc: MemoryAccountant, _ name: String) throws -> Int {
            let context = HostContext(accountant: acc, seed: 1)
            let op = try makeOp(name, context, try registry(context), channels: 4, stride: 2)
            let g = Graph(accountant: acc)
            let x = try Tensor(shape: [2, 4, 8, 8], category: .data, accountant: acc)
            if !acc.isDryRun { x.fill(0.5) }
            let y = try op(g, g.leaf(x))
            try g.backward(y, gradient: try Tensor(shape: y.shape, category: .workspace, accountant: acc))
            return acc.peakTotal
        }
        for name in Self.ops {
            XCTAssertEqual(try step(MemoryAccountant(mode: .dryRun), name), try step(MemoryAccountant(), name), name)
        }
    }

    // MARK: - Strategy

    func testStrategy_WarmupThenBilevelWithTheChosenOrder() throws {
        let context = HostContext()
        let reg = try registry(context)
        let component = try reg.require("espalier.strategy.darts/1", kind: .strategy)
        XCTAssertEqual(component.params.map(\.name), ["order", "warmup_epochs"])

        let plain = try PluginStrategy(component, context: context)
        XCTAssertEqual(plain.requirements, UInt32(ES_REQUIRES_ARCH_PARAMS))
        var st = RunState()
        let first = try plain.planStep(st)
        XCTAssertEqual(first.mode, .bilevel)
        XCTAssertFalse(first.secondOrder, "first order by default")
        XCTAssertEqual(first.archLRScale, 1)
        XCTAssertNil(try plain.derive(st), "no derive: the host applies the DARTS rule")

        let s = try PluginStrategy(component, context: context, settings: ["order": "second", "warmup_epochs": "2"])
        for epoch in 0..<5 {
            st.epoch = epoch
            st.step = epoch * 10 + 3
            let plan = try s.planStep(st)
            if epoch < 2 {
                XCTAssertEqual(plan.mode, .weightsOnly, "epoch \(epoch) is warm-up")
            } else {
                XCTAssertEqual(plan.mode, .bilevel, "epoch \(epoch)")
                XCTAssertTrue(plan.secondOrder, "epoch \(epoch): unrolled")
            }
        }
        let firstOrder = try PluginStrategy(component, context: context, settings: ["order": "first", "warmup_epochs": "1"])
        st.epoch = 0
        XCTAssertEqual(try firstOrder.planStep(st).mode, .weightsOnly)
        st.epoch = 1
        let bilevel = try firstOrder.planStep(st)
        XCTAssertEqual(bilevel.mode, .bilevel)
        XCTAssertFalse(bilevel.secondOrder)

        XCTAssertThrowsError(try PluginStrategy(component, context: context, settings: ["order": "third"]))
        XCTAssertThrowsError(try PluginStrategy(component, context: context, settings: ["warmup_epochs": "-1"])) {
            XCTAssertTrue("\($0)".contains("below the minimum"), "\($0)")
        }
    }
}
