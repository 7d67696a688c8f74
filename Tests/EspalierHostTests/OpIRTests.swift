// The op IR (issue 18): every built-in composed op traced at stride 1 and 2 against a
// hand-written expectation (primitive kinds and output shapes); FLOPs and kept bytes read from
// the IR equal what the accountant and the engine count when the op runs (every DARTS, FiGS and
// MergeNAS op, search and evaluation forms); every primitive's FLOPs column equals the engine's
// count; a build that changes on the same input shape is refused; a raw op is one opaque node;
// `espalier plugins describe OP --graph` prints the IR as text and DOT.

import CEspalierSDK
import EspalierCore
import EspalierHost
import EspalierTestSupport
import Foundation
import XCTest

final class OpIRTests: XCTestCase {
    static let registry = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(environment: [:]))

    func op(_ name: String, channels: Int = 8, stride: Int = 1, affine: Bool = false, settings: [String: String] = [:],
            context: HostContext = HostContext(accountant: MemoryAccountant(mode: .dryRun))) throws -> PluginOp {
        try Self.op(name, channels: channels, stride: stride, affine: affine, settings: settings, context: context)
    }

    static func op(_ name: String, channels: Int = 8, stride: Int = 1, affine: Bool = false, settings: [String: String] = [:],
                   context: HostContext = HostContext(accountant: MemoryAccountant(mode: .dryRun)), exportedWidths: [String: Int]? = nil) throws -> PluginOp {
        try PluginOp(try Self.registry.require(name, kind: .op), context: context,
                     config: OpConfig(inChannels: channels, outChannels: channels, stride: stride, affine: affine),
                     settings: settings, ownerPath: "cell0/edge0/" + name, exportedWidths: exportedWidths)
    }

    /// (primitive, output shape) per node, for an input of 2×8×16×16 (stride 2: 8×8 outputs).
    static func expected(_ name: String, stride s: Int) -> [(String, [Int])] {
        let o = [2, 8, 16 / s, 16 / s]
        let bn = ("batch_norm", o)
        switch name {
        case "none": return [("zeros_like", o)]
        case "max_pool_3x3": return [("max_pool2d", o), bn]
        case "avg_pool_3x3": return [("avg_pool2d", o), bn]
        case "skip_connect":
            return s == 1 ? [] : [("relu", [2, 8, 16, 16]), ("conv2d", [2, 4, 8, 8]), ("crop", [2, 8, 15, 15]), ("conv2d", [2, 4, 8, 8]),
                                  ("concat_channels", o), bn]
        case "sep_conv_3x3", "sep_conv_5x5":
            return [("relu_conv2d", o), ("conv2d", o), bn, ("relu_conv2d", o), ("conv2d", o), bn]
        case "dil_conv_3x3", "dil_conv_5x5": return [("relu_conv2d", o), ("conv2d", o), bn]
        case "figs_sep_conv_3x3", "figs_sep_conv_5x5":
            return [("relu_conv2d", o), ("conv2d", o), bn, ("channel_mask", o), ("relu_conv2d", o), ("conv2d", o), bn, ("channel_mask", o)]
        case "figs_dil_conv_3x3", "figs_dil_conv_5x5": return [("relu_conv2d", o), ("conv2d", o), bn, ("channel_mask", o)]
        case "mergenas_conv":
            let k = [8, 1, 9, 9]
            return Array(repeating: ("kernel_mask", k), count: 4) + Array(repeating: ("scale", k), count: 4)
                + [("sum", k), ("relu", [2, 8, 16, 16]), ("conv2d", o), ("conv2d", o), bn]
        default: return []
        }
    }

    static let composed = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
                           "dil_conv_5x5", "figs_sep_conv_3x3", "figs_sep_conv_5x5", "figs_dil_conv_3x3", "figs_dil_conv_5x5", "mergenas_conv"]

    func testIR_OfEveryBuiltInComposedOp_AtStride1And2_IsTheExpectedGraph() throws {
        for name in Self.composed {
            for s in [1, 2] {
                let ir = try op(name, stride: s).ir(inputShape: [2, 8, 16, 16])
                let want = Self.expected(name, stride: s)
                XCTAssertEqual(ir.kinds, want.map(\.0), "\(name) stride \(s)")
                XCTAssertEqual(ir.nodes.map { ir.values[$0.output].shape }, want.map(\.1), "\(name) stride \(s)")
                XCTAssertEqual(ir.outputShape, [2, 8, 16 / s, 16 / s], "\(name) stride \(s)")
                XCTAssertEqual(ir.inputShape, [2, 8, 16, 16])
                XCTAssertFalse(ir.isRaw)
                // Wiring: each node reads only leaves or earlier nodes, and the first real node reads the input.
                for (k, n) in ir.nodes.enumerated() {
                    for i in n.inputs {
                        if case .node(let j) = ir.values[i].source { XCTAssertLessThan(j, k, "\(name): node \(k) reads node \(j)") }
                    }
                }
            }
        }
        // The leaves are the op's declared parameters and buffers, by the op's own names.
        let sep = try op("sep_conv_3x3").ir(inputShape: [2, 8, 16, 16])
        XCTAssertEqual(sep.values.compactMap { if case .parameter(let n) = $0.source { return n } else { return nil } },
                       ["dw1.weight", "pw1.weight", "dw2.weight", "pw2.weight"])
        XCTAssertEqual(sep.values.compactMap { if case .buffer(let n) = $0.source { return n } else { return nil } },
                       ["bn1.running_mean", "bn1.running_var", "bn2.running_mean", "bn2.running_var"])
        XCTAssertEqual(sep.nodes[1].attributes, ["stride": 1, "padding": 0, "dilation": 1, "groups": 1])
        XCTAssertEqual(sep.parameterCount, 2 * (8 * 9 + 8 * 8))
        // skip_connect at stride 1 is the identity: no node, the output is the input.
        let skip = try op("skip_connect").ir(inputShape: [2, 8, 16, 16])
        XCTAssertEqual(skip.values[skip.output].source, .input)
    }

    /// FLOPs and bytes of running `op` in a dry graph, as the accountant and the engine count them.
    static func measured(_ op: PluginOp, _ shape: [Int], training: Bool) throws -> (flops: Int, bytes: Int) {
        let dry = MemoryAccountant(mode: .dryRun)
        let g = Graph(accountant: dry)
        g.training = training
        let x = try g.leaf(Tensor(shape: shape, category: .activations, accountant: dry))
        let before = dry.currentTotal
        let y = try op(g, x)
        return withExtendedLifetime((x, y)) { (g.flops, dry.currentTotal - before) }
    }

    func testIRCosts_EqualTheAccountantsAndEnginesFigures_ForEveryDartsFigsAndMergeNASOp() throws {
        // FiGS's ops measured as the exported (mask-free) op, as SearchRun's cost targets measure them.
        let plain: [String: [String: String]] = Dictionary(uniqueKeysWithValues: Self.composed.filter { $0.hasPrefix("figs_") }.map { ($0, ["masks": "false"]) })
        for name in Self.composed {
            for (s, affine, training, shape) in [(1, false, true, [2, 8, 16, 16]), (2, false, true, [3, 8, 12, 12]),
                                                 (1, true, false, [2, 8, 10, 10]), (2, true, true, [4, 8, 8, 8])] {
                let context = HostContext(accountant: MemoryAccountant(mode: .dryRun))
                let o = try op(name, stride: s, affine: affine, settings: plain[name] ?? [:], context: context)
                let ir = try o.ir(inputShape: shape, training: training)
                let m = try Self.measured(o, shape, training: training)
                XCTAssertEqual(ir.forwardFlops, m.flops, "\(name) stride \(s) affine \(affine) training \(training): FLOPs")
                XCTAssertEqual(ir.keptBytes, m.bytes, "\(name) stride \(s) affine \(affine) training \(training): kept bytes")
                XCTAssertEqual(ir.parameterCount, o.parameters.reduce(0) { $0 + $1.count }, "\(name): parameters")
            }
        }
    }

    /// A small input for each primitive (shapes that every row accepts), with its attributes.
    static func primitiveCase(_ name: String, _ g: Graph, _ acc: MemoryAccountant) throws -> ([Variable], [String: Double]) {
        func t(_ shape: [Int]) throws -> Variable { g.leaf(try Tensor(shape: shape, category: .activations, accountant: acc)) }
        let x = try t([2, 4, 6, 6])
        switch name {
        case "conv2d", "relu_conv2d": return ([x, try t([4, 1, 3, 3])], ["groups": 4, "padding": 1, "stride": 2])
        case "add": return ([x, try t([2, 4, 6, 6])], [:])
        case "sum": return ([x, try t([2, 4, 6, 6]), try t([2, 4, 6, 6])], [:])
        case "scale": return ([x], ["factor": 0.5])
        case "max_pool2d", "avg_pool2d": return ([x], ["kernel": 3, "stride": 2, "padding": 1])
        case "batch_norm": return ([x, try t([4]), try t([4]), try t([4]), try t([4])], [:])
        case "concat_channels": return ([x, try t([2, 3, 6, 6])], [:])
        case "narrow_channels": return ([x], ["start": 1, "length": 2])
        case "channel_shuffle": return ([x], ["groups": 2])
        case "linear": return ([try t([2, 5]), try t([3, 5]), try t([3])], [:])
        case "zeros_like": return ([x], ["stride": 2])
        case "dropout", "drop_path": return ([x], ["p": 0.2])
        case "weighted_sum": return ([x, try t([2, 4, 6, 6]), try t([2])], [:])
        case "channel_scale": return ([x, try t([4])], [:])
        case "crop": return ([x], ["top": 1, "left": 1])
        case "kernel_mask": return ([try t([4, 1, 5, 5])], ["size": 3])
        default: return ([x], [:])   // relu, global_avg_pool, mean
        }
    }

    func testEveryPrimitive_ItsFlopsColumnEqualsTheEnginesCount() throws {
        XCTAssertGreaterThanOrEqual(Primitives.names.count, 20)
        for name in Primitives.names {
            for training in [true, false] {
                let acc = MemoryAccountant(mode: .dryRun)
                let g = Graph(accountant: acc)
                g.training = training
                let (xs, attributes) = try Self.primitiveCase(name, g, acc)
                let y = try Primitives.apply(name, g, xs, attributes)
                XCTAssertEqual(try Primitives.flops(name, xs.map(\.shape), y.shape, attributes, training: training), g.flops, "\(name) training \(training)")
            }
        }
    }

    func testARawOp_IsOneOpaqueNode_WithItsDeclaredOutputAndSaves() throws {
        let swish = try op("org.example.op.swish/1", stride: 2)
        let ir = try swish.ir(inputShape: [2, 8, 16, 16])
        XCTAssertTrue(ir.isRaw)
        XCTAssertEqual(ir.kinds, ["raw"])
        XCTAssertEqual(ir.outputShape, [2, 8, 8, 8])
        XCTAssertNotNil(ir.rawSaves)
        XCTAssertEqual(ir.values.compactMap { if case .parameter(let n) = $0.source { return n } else { return nil } }, ["beta"])
    }

    func testABuildThatChangesOnTheSameShape_IsRefused_NamingTheDifference() throws {
        // The fixture op builds relu once, then relu and scale from its second build on (it counts its builds).
        let dir = try PluginFixtures.tempDir("unstable")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try PluginFixtures.build("libespalier-unstable.so", in: dir, defines: ["FIX_UNSTABLE_BUILD"])
        let registry = PluginLoader(context: HostContext()).load(PluginSearchPath(directories: [dir]))
        let fixture = try registry.require("org.fixture.op.unstable/1", kind: .op)
        let acc = MemoryAccountant(mode: .dryRun)
        let o = try PluginOp(fixture, context: HostContext(accountant: acc), config: OpConfig(inChannels: 2, outChannels: 2), ownerPath: "e/unstable")
        let g = Graph(accountant: acc)
        let x = try g.leaf(Tensor(shape: [1, 2, 4, 4], category: .activations, accountant: acc))
        _ = try o(g, x)
        XCTAssertThrowsError(try o(g, x)) { e in
            XCTAssertTrue("\(e)".contains("differs from its first") && "\(e)".contains("2 primitives (relu, scale) where its IR has 1 (relu)"), "\(e)")
        }
        // Another shape is another IR: built and kept on its own.
        XCTAssertNoThrow(try o(g, try g.leaf(Tensor(shape: [1, 2, 8, 8], category: .activations, accountant: acc))))
    }

    func testDescribeGraph_PrintsTheIRAsTextAndDOT() throws {
        let text = try EspalierProcess.run(["plugins", "describe", "sep_conv_3x3", "--graph", "--input-shape", "2,8,16,16", "--stride", "2"], cwd: NSTemporaryDirectory())
        XCTAssertEqual(text.status, 0, text.output)
        XCTAssertTrue(text.output.contains("op espalier.op.sep_conv_3x3/1 stride 2: 2×8×16×16 → 2×8×8×8"), text.output)
        XCTAssertTrue(text.output.contains("%0 = relu_conv2d(%x, @dw1.weight) {dilation=1, groups=8, padding=1, stride=2} : 2×8×8×8"), text.output)
        let ir = try op("sep_conv_3x3", stride: 2).ir(inputShape: [2, 8, 16, 16])
        XCTAssertTrue(text.output.contains("total: \(ir.forwardFlops) forward FLOPs, \(ir.keptBytes) bytes kept, \(ir.parameterCount) parameters"), text.output)
        let dot = try EspalierProcess.run(["plugins", "describe", "sep_conv_3x3", "--graph", "--dot"], cwd: NSTemporaryDirectory())
        XCTAssertEqual(dot.status, 0, dot.output)
        XCTAssertTrue(dot.output.hasPrefix("digraph op {"), dot.output)
        XCTAssertEqual(dot.output.components(separatedBy: "shape=box").count - 1, 6, dot.output)
        let masked = try EspalierProcess.run(["plugins", "describe", "figs_sep_conv_3x3", "--graph", "--input-shape", "2,8,16,16"], cwd: NSTemporaryDirectory())
        XCTAssertEqual(masked.status, 0, masked.output)
        XCTAssertTrue(masked.output.contains("channel mask @mask_mid.logits on %2; gates @pw1.weight (out), @dw2.weight (depthwise), @pw2.weight (in)"), masked.output)
        XCTAssertTrue(masked.output.contains("channel mask @mask_out.logits on %6, the op's output; gates @pw2.weight (out)"), masked.output)
        XCTAssertFalse(masked.output.contains("never asked"), masked.output)
        let raw = try EspalierProcess.run(["plugins", "describe", "swish", "--graph"], cwd: NSTemporaryDirectory())
        XCTAssertTrue(raw.output.contains("raw(%x, @beta)") && raw.output.contains("a raw op"), raw.output)
        let gate = try EspalierProcess.run(["plugins", "describe", "espalier.gate.softmax/1", "--graph"], cwd: NSTemporaryDirectory())
        XCTAssertNotEqual(gate.status, 0)
        XCTAssertTrue(gate.output.contains("is a gate"), gate.output)
        let bad = try EspalierProcess.run(["plugins", "describe", "sep_conv_3x3", "--graph", "--input-shape", "2,8,16"], cwd: NSTemporaryDirectory())
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.output.contains("--input-shape '2,8,16' is not N,C,H,W"), bad.output)
    }
}

/// Channel masks read from the IR (OpIR+ChannelMasks.swift): FiGS's ops give exactly the parameter
/// costs SearchRun's targets used to compute from FiGS's names, and a third party's masked op
/// (the fixture's masked-conv, its own names) is read the same way.
final class OpIRChannelMaskTests: XCTestCase {
    func parts(_ ir: OpIR) -> [String: [String]] {
        Dictionary(uniqueKeysWithValues: ir.maskedConvolutions.map { c in (c.weight, c.parameterCostParts.map { "\($0.mask.logits)×\($0.cost)" }) })
    }

    func testFiGSOps_TheIRGivesTheCostsTheirNamesUsedToGive() throws {
        let t = OpIRTests.self
        for (name, k) in [("figs_sep_conv_3x3", 3), ("figs_sep_conv_5x5", 5)] {
            for s in [1, 2] {
                let ir = try t.op(name, stride: s).ir(inputShape: [2, 8, 16, 16])
                XCTAssertEqual(ir.channelMasks.map(\.logits), ["mask_mid.logits", "mask_out.logits"])
                XCTAssertEqual(ir.maskedConvolutions.map(\.weight), ["pw1.weight", "dw2.weight", "pw2.weight"], "\(name): dw1 reads the unmasked input")
                // pw1 (C → M): C·1·1 per mid channel; dw2 (depthwise on M): k² per mid channel; pw2 (M → C): Σπ_mid·Σπ_out.
                XCTAssertEqual(parts(ir), ["pw1.weight": ["mask_mid.logits×8"], "dw2.weight": ["mask_mid.logits×\(k * k)"],
                                           "pw2.weight": ["mask_mid.logits×1", "mask_out.logits×1"]], "\(name) stride \(s)")
            }
        }
        for name in ["figs_dil_conv_3x3", "figs_dil_conv_5x5"] {
            let ir = try t.op(name).ir(inputShape: [2, 8, 16, 16])
            XCTAssertEqual(parts(ir), ["pw.weight": ["mask_out.logits×8"]], name)
        }
        for name in ["sep_conv_3x3", "dil_conv_3x3", "skip_connect"] {
            XCTAssertEqual(try t.op(name, stride: 2).ir(inputShape: [2, 8, 16, 16]).channelMasks, [], "\(name) has no mask")
        }
        // The exported (mask-free) FiGS op has none either.
        XCTAssertEqual(try t.op("figs_sep_conv_3x3", settings: ["masks": "false"]).ir(inputShape: [2, 8, 16, 16]).maskedConvolutions, [])
    }

    func testAThirdPartyMaskedOp_IsReadFromItsIR_WithItsOwnNames() throws {
        let dir = try PluginFixtures.tempDir("masked-conv")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try PluginFixtures.build("libespalier-masked.so", in: dir, defines: ["FIX_MASKED_CONV"])
        let registry = PluginLoader(context: HostContext()).load(PluginSearchPath(directories: [dir]))
        let o = try PluginOp(try registry.require("org.fixture.op.masked-conv/1", kind: .op), context: HostContext(accountant: MemoryAccountant(mode: .dryRun)),
                             config: OpConfig(inChannels: 6, outChannels: 5), ownerPath: "cell0/edge1/masked-conv")
        let ir = try o.ir(inputShape: [2, 6, 8, 8])
        XCTAssertEqual(ir.kinds, ["conv2d", "batch_norm", "channel_mask", "relu", "conv2d"])
        XCTAssertEqual(ir.channelMasks.map(\.logits), ["keep.logits"])
        XCTAssertNil(ir.outputMask, "the mask is inside the op: a convolution follows it")
        XCTAssertEqual(parts(ir), ["proj.weight": ["keep.logits×6"], "out.weight": ["keep.logits×5"]],
                       "1×1 convs 6 → M → 5 with M masked: 6 weights per kept channel before the mask, 5 after it")
        XCTAssertEqual(o.maskWidths, ["keep.logits": 5], "the op asked its mask's width in create")
    }

    func testChannelMask_IsOneNodeOfTheIR_TheExportedFormHasNone_AndBadWidthsAreClearErrors() throws {
        // With a real channel gate: one IR node, with its FLOPs and kept bytes as the engine and the accountant count them.
        let context = HostContext(accountant: MemoryAccountant(mode: .dryRun), seed: 3)
        let registry = PluginLoader(context: context).load(PluginSearchPath.standard(environment: [:]))
        context.selectChannelGate(try registry.require("espalier.gate.figs/1", kind: .gate), settings: ["tau": "0.001"])
        let o = try OpIRTests.op("figs_dil_conv_3x3", context: context)
        XCTAssertEqual(o.maskWidths, ["mask_out.logits": 8])
        let ir = try o.ir(inputShape: [2, 8, 6, 6])
        let mask = try XCTUnwrap(ir.nodes.last)
        XCTAssertEqual(mask.primitive, "channel_mask")
        XCTAssertEqual(ir.outputMask?.logits, "mask_out.logits", "the op's last node masks its output")
        XCTAssertEqual(ir.values[mask.inputs[1]].source, .parameter("mask_out.logits"))
        for training in [true, false] {
            let m = try OpIRTests.measured(o, [2, 8, 6, 6], training: training)
            let traced = try o.ir(inputShape: [2, 8, 6, 6], training: training)
            XCTAssertEqual(traced.forwardFlops, m.flops, "training \(training)")
            XCTAssertEqual(traced.keptBytes, m.bytes, "training \(training)")
        }
        // Exported: the host gives the widths, the op declares no logits and applies no mask.
        let exported = try OpIRTests.op("figs_sep_conv_3x3", context: HostContext(accountant: MemoryAccountant(mode: .dryRun)),
                                        exportedWidths: ["mask_mid.logits": 3, "mask_out.logits": 8])
        XCTAssertFalse(exported.parameters.contains { $0.name.hasSuffix(".logits") })
        XCTAssertEqual(exported.parameters.first { $0.name.hasSuffix("pw1.weight") }?.shape, [3, 8, 1, 1])
        XCTAssertFalse(try exported.ir(inputShape: [2, 8, 6, 6]).kinds.contains("channel_mask"))
        // A width the export lacks, or one wider than the searched op: clear errors.
        XCTAssertThrowsError(try OpIRTests.op("figs_sep_conv_3x3", context: HostContext(), exportedWidths: ["mask_out.logits": 8])) {
            XCTAssertTrue("\($0)".contains("no width for the channel mask 'mask_mid.logits'"), "\($0)")
        }
        XCTAssertThrowsError(try OpIRTests.op("figs_sep_conv_3x3", context: HostContext(), exportedWidths: ["mask_mid.logits": 9, "mask_out.logits": 8])) {
            XCTAssertTrue("\($0)".contains("9") && "\($0)".contains("1…8"), "\($0)")
        }
    }
}
