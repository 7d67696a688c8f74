// ONNX export checked by tools we did not write: each kind of network `espalier train` saves is
// written as an ONNX model, onnx.checker.check_model(full_check) accepts it, and ONNX Runtime's
// CPU logits on 16 real Fashion-MNIST test images equal Espalier's own evaluation-mode logits to
// 1e-4 with the same predicted classes. Kinds: a hand-made genotype with every DARTS op (both
// pools, separable and dilated convs, skip_connect at stride 2 and none) and MergeNAS's conv, with random batch-norm
// statistics; FiGS's per-cell exports from real short searches, with summed and with concatenated
// nodes (their channel widths); a GSparsity search's network; Bonsai-Net's pruned hyper-connected
// network from a real short search (pruned inputs, a zero node); a per-cell network with an empty
// node and a third party's composed op (the fixture's relu-conv, written only from SDK/). The raw swish sample is
// refused with the op, its place and the way out. Saved models name every tensor (the
// safetensors library reads them back). Python with onnx, onnxruntime and safetensors comes from
// .ci/run's virtual environment (ESPALIER_TEST_PYTHON); without it the tests skip with the fix.

import EspalierCore
import EspalierHost
import EspalierSearch
import EspalierTestSupport
import Foundation
import XCTest

final class ONNXExportTests: XCTestCase {
    static var fixtureDir: String?

    func registry() throws -> PluginRegistry {
        if Self.fixtureDir == nil {
            let dir = try PluginFixtures.tempDir("onnx-fixture")
            try PluginFixtures.build("libespalier-fixture.so", in: dir)
            Self.fixtureDir = dir
        }
        let r = PluginLoader(context: HostContext()).load(PluginSearchPath.standard(extraDirectories: [Self.fixtureDir!], environment: [:]))
        XCTAssertEqual(r.failures.map(\.description), [])
        return r
    }

    /// The network of `g` at Fashion-MNIST's shape (C = 4, 28×28×1, 10 classes), every batch-norm's
    /// running statistics drawn at random so the inference form is exercised.
    func network(_ g: Genotype, cells: Int, registry: PluginRegistry) throws -> (DiscreteNetwork, MemoryAccountant) {
        var d = NetworkDescription(genotype: g)
        d.channels = 4; d.cells = cells; d.classes = 10; d.imageSize = 28; d.inputChannels = 1
        let acc = MemoryAccountant()
        let context = HostContext(accountant: acc, seed: 1)
        let net = try acc.withOwner("model") { try DiscreteNetwork(d, registry: registry, context: context, seed: 3) }
        var rng = RNG(seed: 11)
        for (k, t) in net.buffers.enumerated() {
            for i in 0..<t.count { t[i] = k % 2 == 0 ? Float(rng.uniformDouble() - 0.5) : Float(0.5 + rng.uniformDouble()) }
        }
        return (net, acc)
    }

    /// Runs `script` with `python -c`, one argument; its exit status, standard output and standard error.
    static func runPython(_ python: String, _ script: String, _ argument: String) throws -> (status: Int32, out: String, err: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: python)
        p.arguments = ["-c", script, argument]
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let errText = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        return (p.terminationStatus, text, errText)
    }

    /// Writes the model, runs the checker and ONNX Runtime on 16 Fashion-MNIST test images, and
    /// compares with Espalier's evaluation logits.
    func assertRuntimeAgrees(_ net: DiscreteNetwork, _ acc: MemoryAccountant, _ what: String, file: StaticString = #filePath, line: UInt = #line) throws {
        try assertRuntimeAgrees(net, acc, what, file: file, line: line) { try net.onnxModel(accountant: acc, metadata: $0) }
    }

    func assertRuntimeAgrees(_ net: Classifier, _ acc: MemoryAccountant, _ what: String, file: StaticString = #filePath, line: UInt = #line,
                             model makeModel: ([(key: String, value: String)]) throws -> ONNX.Model) throws {
        let python = try Prerequisite.onnxPython()
        let test = try Prerequisite.fashionMNIST(.test, accountant: acc)
        let images = try XCTUnwrap(try DataLoader(test.all.prefix(16), batchSize: 16, shuffle: false).next(accountant: acc)).images
        let g = Graph(accountant: acc)
        g.training = false
        let logits = try g.noGrad { try net.logits(g, g.constant(images)) }.value.array
        let dir = try PluginFixtures.tempDir("onnx")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let model = try makeModel([("espalier.test", what)])
        try Data(model.serialized).write(to: URL(fileURLWithPath: dir + "/model.onnx"))
        try Data(images.array.withUnsafeBufferPointer { Data(buffer: $0) }).write(to: URL(fileURLWithPath: dir + "/images.f32"))
        try Data(logits.withUnsafeBufferPointer { Data(buffer: $0) }).write(to: URL(fileURLWithPath: dir + "/logits.f32"))
        let script = """
        import json, sys, numpy as np, onnx, onnxruntime as ort
        d = sys.argv[1]
        m = onnx.load(d + "/model.onnx")
        onnx.checker.check_model(m, full_check=True)
        x = np.fromfile(d + "/images.f32", dtype=np.float32).reshape(16, 1, 28, 28)
        want = np.fromfile(d + "/logits.f32", dtype=np.float32).reshape(16, -1)
        s = ort.InferenceSession(d + "/model.onnx", providers=["CPUExecutionProvider"])
        got = s.run(["logits"], {"image": x})[0]
        meta = {p.key: p.value for p in m.metadata_props}
        print(json.dumps({"diff": float(np.abs(got - want).max()), "same": bool((got.argmax(1) == want.argmax(1)).all()),
                          "scale": float(np.abs(want).max()), "test": meta.get("espalier.test"), "inputs": [i.name for i in m.graph.input],
                          "batch": m.graph.input[0].type.tensor_type.shape.dim[0].dim_param}))
        """
        let (status, text, errText) = try Self.runPython(python, script, dir)
        XCTAssertEqual(status, 0, "\(what): \(errText)", file: file, line: line)
        guard let json = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else {
            return XCTFail("\(what): no result from the runtime: \(text) \(errText)", file: file, line: line)
        }
        let diff = json["diff"] as? Double ?? .infinity
        XCTAssertLessThanOrEqual(diff, 1e-4, "\(what): max |ONNX Runtime − Espalier| over 16 images (logits up to \(json["scale"] ?? 0))", file: file, line: line)
        XCTAssertEqual(json["same"] as? Bool, true, "\(what): the predicted classes", file: file, line: line)
        XCTAssertEqual(json["test"] as? String, what, "metadata_props", file: file, line: line)
        XCTAssertEqual(json["inputs"] as? [String], ["image"], file: file, line: line)
        XCTAssertEqual(json["batch"] as? String, "N", "a symbolic batch dimension", file: file, line: line)
    }

    func testEveryDartsOp_ExportsAndONNXRuntimeAgrees() throws {
        // Normal cell: stride-1 ops (MergeNAS's conv among them: kernel masks on its weights); reduction cell: the ops on its
        // inputs at stride 2 (skip_connect is FactorizedReduce's kin) and `none`.
        let normal: [Genotype.Edge] = [.init("sep_conv_3x3", 0), .init("dil_conv_3x3", 1), .init("sep_conv_5x5", 0), .init("mergenas_conv", 2),
                                       .init("max_pool_3x3", 1), .init("avg_pool_3x3", 2)]
        let reduce: [Genotype.Edge] = [.init("skip_connect", 0), .init("max_pool_3x3", 1), .init("avg_pool_3x3", 0), .init("sep_conv_3x3", 2),
                                       .init("dil_conv_5x5", 1), .init("none", 3)]
        var g = Genotype(normal: normal, normalConcat: [2, 3, 4], reduce: reduce, reduceConcat: [2, 3, 4])
        g.normalNodeSizes = [2, 2, 2]; g.reduceNodeSizes = [2, 2, 2]
        let (net, acc) = try network(g, cells: 3, registry: try registry())
        try assertRuntimeAgrees(net, acc, "darts-every-op")
    }

    func testFigsExports_SummedAndConcatenated_ExportAndONNXRuntimeAgrees() throws {
        let registry = try registry()
        for aggregator in ["sum", "concat"] {
            var c = tinySearchConfig(strategy: "espalier.strategy.figs/1", settings: aggregator == "concat" ? ["aggregator": "concat"] : [:],
                                     ops: ["espalier.op.skip_connect/1", "espalier.op.figs_sep_conv_3x3/1", "espalier.op.figs_dil_conv_3x3/1"], epochs: 1)
            c.channelGate = "espalier.gate.figs/1"
            c.channelGateSettings = ["tau": "0.001"]
            let run = try syntheticSearchRun(c, registry: registry)
            try run.run()
            // Some masks narrower than their op: the exported widths differ from C.
            for p in run.supernet.weights where p.name.hasSuffix("mask_mid.logits") || p.name.hasSuffix("cell0/edge1/figs_dil_conv_3x3/mask_out.logits") {
                for i in 0..<p.count { p.value[i] = i % 3 == 0 ? -9 : 9 }
            }
            let g = try run.derive()
            XCTAssertTrue(try XCTUnwrap(g.perCell).contains { ($0.channelWidths ?? []).contains { ($0["mask_mid.logits"] ?? 4) < 4 } }, "narrower widths")
            let (net, acc) = try network(g, cells: 2, registry: registry)
            try assertRuntimeAgrees(net, acc, "figs-\(aggregator)")
        }
    }

    func testGSparsityStyleNetwork_WithAnEmptyNode_AndAThirdPartyComposedOp_ExportAndAgree() throws {
        // Per cell: node 0 keeps three ops (one of them the fixture's relu-conv), node 1 none (a zero state).
        func gene(reduction: Bool, channels: Int) -> Genotype.CellGene {
            let edges: [Genotype.Edge] = reduction ? [.init("sep_conv_3x3", 0), .init("max_pool_3x3", 1), .init("skip_connect", 1)]
                                                   : [.init("sep_conv_3x3", 0), .init("relu_conv", 1), .init("skip_connect", 1)]
            return Genotype.CellGene(reduction: reduction, channels: channels, edges: edges, nodeSizes: [3, 0], concat: [2, 3],
                                     opSettings: Array(repeating: [:], count: edges.count))
        }
        let cells = [gene(reduction: false, channels: 4), gene(reduction: true, channels: 8), gene(reduction: false, channels: 8)]
        var g = Genotype(normal: cells[0].edges, normalConcat: [2, 3], reduce: cells[1].edges, reduceConcat: [2, 3],
                         opIDs: ["relu_conv": "org.fixture.op.relu-conv/1"])
        g.normalNodeSizes = [3, 0]; g.reduceNodeSizes = [3, 0]
        g.perCell = cells
        let (net, acc) = try network(g, cells: 3, registry: try registry())
        try assertRuntimeAgrees(net, acc, "per-cell-third-party")
    }

    func testAGSparsitySearchsNetwork_ExportsAndONNXRuntimeAgrees() throws {
        let registry = try registry()
        var c = tinySearchConfig(strategy: "espalier.strategy.gsparsity/1", settings: ["threshold": "0.02"])
        c.regularizers = ["espalier.regularizer.proxsgd/1"]
        c.regularizerSettings = ["espalier.regularizer.proxsgd/1": ["mu": "0.5"]]
        let run = try syntheticSearchRun(c, registry: registry)
        try run.run()
        let g = try run.derive()
        XCTAssertNotNil(g.normalNodeSizes, "GSparsity's genotype: any number of ops per node")
        let (net, acc) = try network(g, cells: 3, registry: registry)
        try assertRuntimeAgrees(net, acc, "gsparsity")
    }

    func testABonsaiSearchsPrunedNetwork_ExportsAndONNXRuntimeAgrees() throws {
        let registry = try registry()
        var c = SearchConfig()
        c.space.channels = 4; c.space.nodes = 2; c.space.multiplier = 2; c.space.stemMultiplier = 1
        c.space.ops = ["max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3"].map { "espalier.op.\($0)/1" }
        c.space.cells = 3
        c.space.hyperConnected = true
        c.batchSize = 4; c.epochs = 1; c.seed = 3
        c.strategy = "espalier.strategy.bonsai/1"; c.gate = "espalier.gate.sawwave/1"; c.regularizers = ["espalier.regularizer.compression/1"]
        c.strategySettings = ["section_cells": "3", "margin": "0", "budget": "1GiB"]
        let run = try syntheticSearchRun(c, registry: registry)
        try run.run()
        var arch = try run.prunedArchitecture()
        // Pruned as a longer search would: cell 2 loses the stem's input, cell 1's node 1 every op (a zero node).
        arch.inputs[2] = arch.inputs[2].filter { $0 != 0 }
        for e in 2..<c.space.edgesPerCell { arch.ops[1][e] = [] }
        arch.ops[0][0] = ["sep_conv_3x3", "max_pool_3x3"]
        arch.space.inputChannels = 1; arch.space.classes = 10
        let acc = MemoryAccountant()
        let net = try acc.withOwner("model") { try PrunedNetwork(arch, registry: registry, context: HostContext(accountant: acc, seed: 1), seed: 3) }
        var rng = RNG(seed: 11)
        for (k, t) in net.buffers.enumerated() {
            for i in 0..<t.count { t[i] = k % 2 == 0 ? Float(rng.uniformDouble() - 0.5) : Float(0.5 + rng.uniformDouble()) }
        }
        try assertRuntimeAgrees(net, acc, "bonsai-pruned") { try net.onnxModel(accountant: acc, imageSize: 28, metadata: $0) }
        // `espalier export` of a saved pruned network: the image size from its metadata (train-pruned records it), or --image-size.
        let dir = try PluginFixtures.tempDir("onnx-pruned")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try net.save(path: dir + "/pruned-model.safetensors", extraMetadata: ["espalier.image_size": "28"])
        let ok = try EspalierProcess.run(["export", "--model", dir, "--out", dir + "/a.onnx"], cwd: dir)
        XCTAssertEqual(ok.status, 0, ok.output)
        XCTAssertTrue(ok.output.contains("input 'image' (N, 1, 28, 28)"), ok.output)
        try net.save(path: dir + "/old-model.safetensors")
        let old = try EspalierProcess.run(["export", "--model", dir + "/old-model.safetensors", "--out", dir + "/b.onnx"], cwd: dir)
        XCTAssertNotEqual(old.status, 0)
        XCTAssertTrue(old.output.contains("--image-size"), old.output)
        let given = try EspalierProcess.run(["export", "--model", dir + "/old-model.safetensors", "--image-size", "28", "--out", dir + "/b.onnx"], cwd: dir)
        XCTAssertEqual(given.status, 0, given.output)
        XCTAssertEqual(FileManager.default.contents(atPath: dir + "/a.onnx"), FileManager.default.contents(atPath: dir + "/b.onnx"))
    }

    func testARawOp_IsRefusedByName_WithItsPlaceAndTheWayOut() throws {
        var g = Genotype(normal: [.init("swish", 0), .init("skip_connect", 1)], normalConcat: [2],
                         reduce: [.init("max_pool_3x3", 0), .init("skip_connect", 1)], reduceConcat: [2], opIDs: ["swish": "org.example.op.swish/1"])
        g.normalNodeSizes = [2]; g.reduceNodeSizes = [2]
        let (net, acc) = try network(g, cells: 3, registry: try registry())   // reductions at 1 and 2: cell 0 is normal
        XCTAssertThrowsError(try net.onnxModel(accountant: acc)) {
            let text = "\($0)"
            XCTAssertTrue(text.contains("org.example.op.swish/1") && text.contains("raw op") && text.contains("cell 0, node 0, edge 0")
                          && text.contains("composed op"), text)
        }
    }

    func testTrainWithONNX_AndExport_WriteTheSameModel_WithTheDataMetadata() throws {
        _ = try Prerequisite.fashionMNIST(.test, accountant: MemoryAccountant())
        let python = try Prerequisite.onnxPython()
        let dir = try PluginFixtures.tempDir("onnx-cli")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var g = Genotype(normal: [.init("sep_conv_3x3", 0), .init("skip_connect", 1)], normalConcat: [2],
                         reduce: [.init("max_pool_3x3", 0), .init("dil_conv_3x3", 1)], reduceConcat: [2])
        g.normalNodeSizes = [2]; g.reduceNodeSizes = [2]
        try g.save(path: dir + "/genotype.json")
        let train = try EspalierProcess.run(["train", "--genotype", dir + "/genotype.json", "--train-images", "32", "--test-images", "16", "--epochs", "1",
                                             "--channels", "4", "--cells", "3", "--batch-size", "16", "--onnx", "--out", dir + "/train"], cwd: dir, timeout: 300)
        XCTAssertEqual(train.status, 0, train.output)
        XCTAssertTrue(train.output.contains("written: \(dir)/train/model.onnx"), train.output)
        let export = try EspalierProcess.run(["export", "--model", dir + "/train", "--out", dir + "/again.onnx"], cwd: dir)
        XCTAssertEqual(export.status, 0, export.output)
        XCTAssertEqual(FileManager.default.contents(atPath: dir + "/again.onnx"), FileManager.default.contents(atPath: dir + "/train/model.onnx"),
                       "the same model, from the network in memory and from its file")
        let text = try Self.runPython(python, "import json, onnx, sys; m = onnx.load(sys.argv[1]); onnx.checker.check_model(m); "
                                      + "print(json.dumps({p.key: p.value for p in m.metadata_props}))", dir + "/again.onnx").out
        let meta = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: String], text)
        XCTAssertEqual(meta["espalier.input_shape"], "[1, 28, 28]")
        XCTAssertEqual(meta["espalier.class_count"], "10")
        XCTAssertEqual(meta["espalier.dataset"], "fashion-mnist")
        XCTAssertNotNil(meta["espalier.version"])
        let stats = try XCTUnwrap(meta["espalier.normalization"])
        XCTAssertTrue(stats.contains("mean") && stats.contains("std"), stats)
        XCTAssertTrue(try XCTUnwrap(meta["espalier.genotype"]).contains("sep_conv_3x3"))
        // Clear errors: an opset Espalier does not write, a file that is not a model.
        let opset = try EspalierProcess.run(["export", "--model", dir + "/train", "--opset", "17"], cwd: dir)
        XCTAssertNotEqual(opset.status, 0)
        XCTAssertTrue(opset.output.contains("writes opset 13"), opset.output)
        let missing = try EspalierProcess.run(["export", "--model", dir + "/genotype.json"], cwd: dir)
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertTrue(missing.output.contains("genotype.json"), missing.output)
    }

    func testSavedModel_NamesEveryBuffer_AsTheONNXModelDoes_AndFilesWithNumberedBuffersStillLoad() throws {
        var g = Genotype(normal: [.init("sep_conv_3x3", 0), .init("skip_connect", 1)], normalConcat: [2],
                         reduce: [.init("max_pool_3x3", 0), .init("skip_connect", 1)], reduceConcat: [2])
        g.normalNodeSizes = [2]; g.reduceNodeSizes = [2]
        let registry = try registry()
        let (net, acc) = try network(g, cells: 3, registry: registry)
        let dir = try PluginFixtures.tempDir("named-buffers")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try net.save(path: dir + "/model.safetensors")
        let names = try SafeTensorsFile.read(path: dir + "/model.safetensors").names
        XCTAssertFalse(names.contains { $0.hasPrefix("buffers/") }, "\(names)")
        for expected in ["stem/bn/running_mean", "stem/bn/running_var", "cell0/pre0/bn/running_var", "cell1/pre0/bn/running_mean",
                         "cell0/node0/sep_conv_3x30/bn1.running_mean"] {
            XCTAssertTrue(names.contains(expected), "\(expected) in \(names)")
        }
        XCTAssertEqual(names.count, net.parameters.count + net.buffers.count, "one name per tensor")
        // The official safetensors library reads the same names.
        let python = try Prerequisite.onnxPython()
        let listed = try Self.runPython(python, "import json, sys; from safetensors.numpy import load_file; print(json.dumps(sorted(load_file(sys.argv[1]).keys())))",
                                        dir + "/model.safetensors").out
        XCTAssertEqual(try JSONSerialization.jsonObject(with: Data(listed.utf8)) as? [String], names.sorted(), listed)
        // The ONNX model's initializers carry the same names.
        let initializers = Set(try net.onnxModel(accountant: acc).graph.initializers.map(\.name))
        XCTAssertTrue(Set(names).isSubset(of: initializers), "\(Set(names).subtracting(initializers))")
        // A file written before buffers had names ("buffers/00000", …) loads with the same values.
        let old = try SafeTensorsFile.read(path: dir + "/model.safetensors")
        var legacy: [String: Tensor] = [:]
        for p in net.parameters { legacy[String(p.name.dropFirst("model/".count))] = p.value }
        for (i, t) in net.buffers.enumerated() { legacy[String(format: "buffers/%05d", i)] = t }
        try SafeTensorsFile(named: legacy, metadata: old.metadata).write(path: dir + "/old.safetensors")
        let context = HostContext(accountant: MemoryAccountant(), seed: 0)
        let (loaded, _) = try DiscreteNetwork.load(path: dir + "/old.safetensors", registry: registry, context: context)
        XCTAssertEqual(loaded.buffers.map(\.array), net.buffers.map(\.array))
        let (again, _) = try DiscreteNetwork.load(path: dir + "/model.safetensors", registry: registry, context: context)
        XCTAssertEqual(again.buffers.map(\.array), net.buffers.map(\.array))
    }

    func testTheONNXWireFormat_OfASmallModel_IsTheBytesProtobufWrites() {
        // ModelProto{ir_version 7, producer "espalier", graph{node Relu "r"(x → r), name "g"}, opset 13}: hand-encoded.
        var graph = ONNX.Graph(name: "g")
        graph.nodes = [ONNX.Node("Relu", name: "r", inputs: ["x"], outputs: ["r"])]
        let bytes = ONNX.Model(graph: graph).serialized
        let node: [UInt8] = [0x0A, 1, 0x78, 0x12, 1, 0x72, 0x1A, 1, 0x72, 0x22, 4] + Array("Relu".utf8)
        let graphBytes: [UInt8] = [0x0A, UInt8(node.count)] + node + [0x12, 1, 0x67]
        let expected: [UInt8] = [0x08, 7, 0x12, 8] + Array("espalier".utf8) + [0x3A, UInt8(graphBytes.count)] + graphBytes + [0x42, 4, 0x0A, 0, 0x10, 13]
        XCTAssertEqual(bytes, expected)
    }
}
