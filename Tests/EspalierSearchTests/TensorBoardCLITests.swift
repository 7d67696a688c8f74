// `espalier search`, `train`, `train-pruned` and `train-baseline` write TensorBoard event files
// (OUT/tb; train-pruned beside its search's, in OUT/tb/train-pruned), read back here
// with TensorBoard's own reader (EventAccumulator, in a Python subprocess that prints JSON): the
// scalars equal log.jsonl's / train_log.jsonl's (as float32), step = the epoch; α's histograms
// count the logged α; the cell pictures are PNGs of the size `dot -Tpng` renders. Without Python
// or the tensorboard package the test is a Prerequisite (a failure under CI, which installs it).

import EspalierCore
import EspalierSearch
import EspalierTestSupport
import Foundation
import XCTest

final class TensorBoardCLITests: TemporaryDirectoryTestCase {
    static let reader = """
    import json, struct, sys
    from tensorboard.backend.event_processing import event_accumulator as ea
    acc = ea.EventAccumulator(sys.argv[1], size_guidance={k: 0 for k in [ea.SCALARS, ea.HISTOGRAMS, ea.IMAGES, ea.TENSORS, ea.COMPRESSED_HISTOGRAMS, ea.AUDIO]})
    acc.Reload()
    tags = acc.Tags()
    out = {"scalars": {}, "histograms": {}, "images": {}}
    for t in tags["scalars"]:
        out["scalars"][t] = [[e.step, e.value] for e in acc.Scalars(t)]
    for t in tags["histograms"]:
        out["histograms"][t] = [{"step": e.step, "min": e.histogram_value.min, "max": e.histogram_value.max, "num": e.histogram_value.num,
                                 "sum": e.histogram_value.sum, "limits": list(e.histogram_value.bucket_limit),
                                 "buckets": list(e.histogram_value.bucket)} for e in acc.Histograms(t)]
    for t in tags["images"]:
        rows = []
        for e in acc.Images(t):
            png = e.encoded_image_string
            w, h = struct.unpack(">II", png[16:24])
            rows.append({"step": e.step, "width": e.width, "height": e.height, "png": png[:8] == b"\\x89PNG\\r\\n\\x1a\\n", "ihdr": [w, h], "bytes": len(png)})
        out["images"][t] = rows
    print(json.dumps(out))
    """

    struct Events: Decodable {
        struct Histogram: Decodable { var step: Int; var min, max, num, sum: Double; var limits, buckets: [Double] }
        struct Image: Decodable { var step, width, height: Int; var png: Bool; var ihdr: [Int]; var bytes: Int }
        var scalars: [String: [[Double]]]
        var histograms: [String: [Histogram]]
        var images: [String: [Image]]

        /// A scalar's (step, value) pairs.
        func series(_ tag: String) -> [(step: Int, value: Float)] { (scalars[tag] ?? []).map { (Int($0[0]), Float($0[1])) } }
    }

    /// OUT/tb read by TensorBoard's EventAccumulator.
    func readEvents(_ folder: String) throws -> Events {
        let python = try Prerequisite.tensorBoardPython()
        let script = path("read_events.py")
        try Self.reader.write(toFile: script, atomically: true, encoding: .utf8)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: python)
        p.arguments = [script, folder]
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        let errors = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw CheckFailed("the reader failed (\(p.terminationStatus)): \(errors)") }
        return try JSONDecoder().decode(Events.self, from: data)
    }

    func jsonLines(_ file: String) throws -> [[String: Any]] {
        try String(contentsOfFile: file, encoding: .utf8).split(separator: "\n").map {
            try XCTUnwrap(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
        }
    }

    /// `tag`'s series is one value per epoch, steps 1…, equal (as float32) to `values`.
    func assertSeries(_ e: Events, _ tag: String, _ values: [Double], file: StaticString = #filePath, line: UInt = #line) {
        let s = e.series(tag)
        XCTAssertEqual(s.map(\.step), Array(1...values.count), "\(tag): steps", file: file, line: line)
        // Equal as float32, to one float ulp: a logged double halfway between two floats may be read
        // back from the JSON text one double ulp off, and round to the other float.
        let close = s.count == values.count && zip(s, values).allSatisfy { abs($0.value - Float($1)) <= Float($1).ulp }
        XCTAssertTrue(close, "\(tag): values \(s.map(\.value)) against the log's \(values.map { Float($0) })", file: file, line: line)
    }

    /// Each tag's series equals its log key's column; for each `maps` prefix, every key K of the
    /// logged object has the series prefix+K (and there is at least one).
    func assertLogged(_ e: Events, _ log: [[String: Any]], _ columns: [String: String], maps: [String: String],
                      file: StaticString = #filePath, line: UInt = #line) {
        func number(_ x: Any?) -> Double { (x as? NSNumber)?.doubleValue ?? .nan }
        for (tag, key) in columns { assertSeries(e, tag, log.map { number($0[key]) }, file: file, line: line) }
        for (prefix, key) in maps {
            let objects = log.map { $0[key] as? [String: Any] ?? [:] }
            XCTAssertFalse(objects[0].isEmpty, key, file: file, line: line)
            for k in objects[0].keys { assertSeries(e, prefix + k, objects.map { number($0[k]) }, file: file, line: line) }
        }
    }

    /// A short search on synthetic data (4 steps per epoch) into `out`; its exit status must be `status`.
    func search(_ out: String, epochs: Int, environment: [String: String] = [:], status: Int32 = 0) throws {
        _ = try Prerequisite.espalierBinary()
        let r = try EspalierProcess.run(Self.searchArguments(out, epochs: epochs) + ["--no-supervise"], cwd: dir, environment: environment, timeout: 300)
        XCTAssertEqual(r.status, status, r.output)
        if status == 0 { XCTAssertTrue(r.output.contains("watch it: tensorboard --logdir \(out)/tb\n"), r.output) }
    }

    static func searchArguments(_ out: String, epochs: Int) -> [String] {
        ["search", "--dataset", "synthetic", "--train-images", "128", "--eval-images", "32", "--channels", "4", "--cells", "3",
         "--batch-size", "16", "--epochs", String(epochs), "--regularizer", "espalier.regularizer.beta-decay/1",
         "--set", "tau.schedule=linear-decay", "--out", out]
    }

    func testSearchOnTwoRanks_RankZeroAloneWritesTheEvents() throws {
        _ = try Prerequisite.tensorBoardPython()   // before the runs, so a missing reader is said at once
        let out = path("run")
        let r = try MPIRun.run(ranks: 2, Self.searchArguments(out, epochs: 2), cwd: dir)
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: out + "/tb").count, 1, "one event file, rank 0's")
        let e = try readEvents(out + "/tb")
        let log = try jsonLines(out + "/log.jsonl")
        XCTAssertEqual(log.count, 2)
        assertLogged(e, log, ["loss/train": "train_loss", "loss/valid": "valid_loss", "memory/peak_bytes": "peak_bytes"], maps: [:])
        XCTAssertEqual(e.images["cell/reduce"]?.map(\.step), [1, 2])
    }

    func testResumedSearch_ANewFile_TensorBoardDropsWhatTheStoppedRunWroteAfterItsCheckpoint() throws {
        _ = try Prerequisite.tensorBoardPython()   // before the runs, so a missing reader is said at once
        let out = path("run")
        // Stopped in epoch 2 (after step 6): epoch 1 logged, the checkpoint mid-epoch 2.
        try search(out, epochs: 3, environment: ["ESPALIER_STOP_AFTER_STEPS": "6"], status: 130)
        let first = try FileManager.default.contentsOfDirectory(atPath: out + "/tb")
        XCTAssertEqual(first.count, 1)
        // As if the stopped run had logged epoch 2 before dying, after its last checkpoint: the resumed run repeats that epoch.
        let h = try XCTUnwrap(FileHandle(forWritingAtPath: out + "/tb/" + first[0]))
        try h.seekToEnd()
        try h.write(contentsOf: Data(TFRecord.frame(TensorBoardEvent.summary(step: 2, wallTime: Date().timeIntervalSince1970,
                                                                             values: [.scalar("loss/train", 999), .scalar("orphan", 1)]))))
        try h.close()
        let r = try EspalierProcess.run(["search", "--resume", out, "--no-supervise"], cwd: dir, timeout: 300)
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: out + "/tb").count, 2, "the resumed run writes a file of its own")
        let e = try readEvents(out + "/tb")
        let log = try jsonLines(out + "/log.jsonl")
        XCTAssertEqual(log.count, 3)
        assertLogged(e, log, ["loss/train": "train_loss", "accuracy/valid": "valid_accuracy"], maps: [:])
        XCTAssertEqual(e.series("orphan").count, 0, "the stopped run's epoch 2 is dropped")
        XCTAssertEqual(e.images["cell/normal"]?.map(\.step), [1, 2, 3])
    }

    func dotPNGSize(_ dotFile: String) throws -> [Int] {
        guard let program = Genotype.graphvizDot() else { throw Prerequisite.missing("Graphviz's dot is not on PATH (apt-get install graphviz; .ci/install does)") }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: program)
        p.arguments = ["-Tpng", dotFile]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let png = Array(out.fileHandleForReading.readDataToEndOfFile())
        p.waitUntilExit()
        let h = try XCTUnwrap(pngHeader(png), "dot -Tpng made no PNG")
        return [h.width, h.height]
    }

    func testSearch_WritesScalarsHistogramsAndCellImages_TensorBoardReadsThem() throws {
        _ = try Prerequisite.tensorBoardPython()   // before the runs, so a missing reader is said at once
        let out = path("run")
        try search(out, epochs: 2)
        let tb = out + "/tb"
        let files = try FileManager.default.contentsOfDirectory(atPath: tb)
        XCTAssertEqual(files.count, 1, "\(files)")
        XCTAssertTrue(files.allSatisfy { $0.hasPrefix("events.out.tfevents.") }, "\(files)")
        let e = try readEvents(tb)
        let log = try jsonLines(out + "/log.jsonl")
        XCTAssertEqual(log.count, 2)
        assertLogged(e, log, ["loss/train": "train_loss", "loss/valid": "valid_loss", "accuracy/train": "train_accuracy",
                              "accuracy/valid": "valid_accuracy", "learning_rate/weights": "learning_rate", "loss/arch": "arch_loss",
                              "memory/peak_bytes": "peak_bytes", "memory/rss_peak_bytes": "rss_peak_bytes", "time/epoch_seconds": "seconds"],
                     maps: ["loss/regularizer/": "regularizer_terms", "memory/peak/": "peak_by_category"])
        XCTAssertEqual((log[0]["regularizer_terms"] as? [String: Double]).map { Set($0.keys) }, ["espalier.regularizer.beta-decay/1"])
        // The prediction is memory.csv's (predicted_peak_bytes, the fourth column).
        let csv = try String(contentsOfFile: out + "/memory.csv", encoding: .utf8).split(separator: "\n").dropFirst()
        assertSeries(e, "memory/predicted_peak_bytes", csv.map { Double($0.split(separator: ",", omittingEmptySubsequences: false)[3]) ?? .nan })
        // gate.tau follows linear-decay: present every epoch, falling.
        let tau = e.series("value/gate.tau")
        XCTAssertEqual(tau.map(\.step), [1, 2])
        XCTAssertLessThan(tau[1].value, tau[0].value)
        XCTAssertLessThan(tau[0].value, 10)

        // α: one histogram per cell type and per edge, counting the logged logits.
        for (cell, key) in [("normal", "alpha_normal"), ("reduce", "alpha_reduce")] {
            let alpha = try XCTUnwrap(log.last?[key] as? [[Double]])
            let all = try XCTUnwrap(e.histograms["alpha/" + cell])
            XCTAssertEqual(all.map(\.step), [1, 2])
            let last = all[1]
            XCTAssertEqual(last.num, Double(alpha.count * alpha[0].count))
            XCTAssertEqual(Float(last.min), Float(alpha.flatMap { $0 }.min()!))
            XCTAssertEqual(Float(last.max), Float(alpha.flatMap { $0 }.max()!))
            XCTAssertEqual(last.buckets.reduce(0, +), last.num)
            XCTAssertEqual(last.limits.last, last.max)
            for (edge, row) in alpha.enumerated() {
                let h = try XCTUnwrap(e.histograms["alpha/\(cell)/edge_\(edge)"]?.last, "alpha/\(cell)/edge_\(edge)")
                XCTAssertEqual(h.num, Double(row.count))
                XCTAssertEqual(h.sum, row.map { Double(Float($0)) }.reduce(0, +), accuracy: 1e-5)
            }
            XCTAssertNil(e.histograms["alpha/\(cell)/edge_\(alpha.count)"])
            XCTAssertEqual(e.histograms["weights/" + cell]?.last?.num, Double(alpha.count * alpha[0].count))
            // The cell pictures: a PNG per epoch, its size that of the final genotype's `dot -Tpng`.
            let images = try XCTUnwrap(e.images["cell/" + cell])
            XCTAssertEqual(images.map(\.step), [1, 2])
            for i in images { XCTAssertTrue(i.png); XCTAssertEqual([i.width, i.height], i.ihdr); XCTAssertGreaterThan(i.width, 0) }
            XCTAssertEqual(images.last.map { [$0.width, $0.height] }, try dotPNGSize(out + "/genotype_\(cell).dot"))
        }
    }

    func testTrain_WritesEpochScalarsAndTheCells_TensorBoardReadsThem() throws {
        _ = try Prerequisite.tensorBoardPython()   // before the runs, so a missing reader is said at once
        let searched = path("search")
        try search(searched, epochs: 1)
        let out = path("train")
        let r = try EspalierProcess.run(["train", "--genotype", searched + "/genotype.json", "--dataset", "synthetic", "--channels", "4",
                                         "--cells", "3", "--epochs", "2", "--batch-size", "16", "--train-images", "64", "--test-images", "32",
                                         "--no-supervise", "--out", out], cwd: dir, timeout: 300)
        XCTAssertEqual(r.status, 0, r.output)
        let e = try readEvents(out + "/tb")
        let log = try jsonLines(out + "/train_log.jsonl")
        XCTAssertEqual(log.count, 2)
        assertLogged(e, log, ["loss/train": "trainLoss", "loss/test": "testLoss", "accuracy/train": "trainAccuracy",
                              "accuracy/test": "testAccuracy", "learning_rate": "learningRate", "memory/peak_bytes": "peakBytes"],
                     maps: ["memory/peak/": "peakByCategory"])
        // The prediction the command printed ("predicted peak of one training step: X + datasets Y") is one value every epoch.
        let predicted = e.series("memory/predicted_peak_bytes")
        XCTAssertEqual(predicted.map(\.step), [1, 2])
        XCTAssertEqual(predicted[0].value, predicted[1].value)
        XCTAssertGreaterThan(predicted[0].value, 0)
        for cell in ["normal", "reduce"] {
            let images = try XCTUnwrap(e.images["cell/" + cell], "cell/\(cell)")
            XCTAssertEqual(images.map(\.step), [0], "the trained cells, once, at step 0")
            XCTAssertEqual(images.first.map { [$0.width, $0.height] }, try dotPNGSize(searched + "/genotype_\(cell).dot"))
        }
        XCTAssertTrue(e.histograms.isEmpty)
    }

    /// Each epoch of a training command's JSON lines is in TensorBoard, with the prediction every epoch.
    func assertTrainingEpochs(_ events: String, _ jsonl: String, epochs: Int, file: StaticString = #filePath, line: UInt = #line) throws {
        let e = try readEvents(events)
        let log = try jsonLines(jsonl)
        XCTAssertEqual(log.count, epochs, file: file, line: line)
        assertLogged(e, log, ["loss/train": "trainLoss", "loss/test": "testLoss", "accuracy/train": "trainAccuracy",
                              "accuracy/test": "testAccuracy", "learning_rate": "learningRate", "memory/peak_bytes": "peakBytes"],
                     maps: ["memory/peak/": "peakByCategory"], file: file, line: line)
        let predicted = e.series("memory/predicted_peak_bytes")
        XCTAssertEqual(predicted.map(\.step), Array(1...epochs), file: file, line: line)
        XCTAssertGreaterThan(predicted.first?.value ?? 0, 0, file: file, line: line)
    }

    func testTrainPruned_WritesItsEpochsBesideTheSearch_TensorBoardReadsThem() throws {
        _ = try Prerequisite.tensorBoardPython()   // before the runs, so a missing reader is said at once
        // A pruned hyper-connected network as a Bonsai search leaves it: one op per edge, each cell fed by its first source.
        var space = SearchConfig().space
        space.channels = 4; space.nodes = 2; space.multiplier = 2; space.stemMultiplier = 1; space.cells = 3
        space.ops = ["max_pool_3x3", "skip_connect", "sep_conv_3x3"].map { "espalier.op.\($0)/1" }
        space.hyperConnected = true
        let arch = PrunedArchitecture(space: space, ops: (0..<3).map { _ in Array(repeating: ["sep_conv_3x3"], count: space.edgesPerCell) },
                                      inputs: [[0], [0], [0]])
        try FileManager.default.createDirectory(atPath: path("search/tb"), withIntermediateDirectories: true)
        try arch.save(path: path("search/pruned.json"))
        let r = try EspalierProcess.run(["train-pruned", "--pruned", path("search/pruned.json"), "--dataset", "synthetic", "--epochs", "2",
                                         "--batch-size", "16", "--train-images", "64", "--test-images", "32"], cwd: dir, timeout: 300)
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(r.output.contains("predicted peak of one training step: "), r.output)
        try assertTrainingEpochs(path("search/tb/train-pruned"), path("search/train_pruned_log.jsonl"), epochs: 2)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: path("search/tb")), ["train-pruned"], "a run of its own, the search's files untouched")
    }

    func testTrainBaseline_OnAnNPZ_WritesItsEpochs_TensorBoardReadsThem() throws {
        _ = try Prerequisite.tensorBoardPython()   // before the runs, so a missing reader is said at once
        try Data(try DataFixtures.npz(train: 48, test: 16, classes: 3)).write(to: URL(fileURLWithPath: path("d.npz")))
        let r = try EspalierProcess.run(["train-baseline", "--dataset", "npz", "--data-dir", path("d.npz"), "--epochs", "2", "--batch-size", "16",
                                         "--width", "4", "--out", path("baseline")], cwd: dir, timeout: 300)
        XCTAssertEqual(r.status, 0, r.output)
        XCTAssertTrue(r.output.contains("48 training and 16 test images of 3×8×8, 3 classes"), r.output)
        XCTAssertTrue(r.output.contains("watch it: tensorboard --logdir \(path("baseline"))/tb"), r.output)
        try assertTrainingEpochs(path("baseline/tb"), path("baseline/train_log.jsonl"), epochs: 2)
    }
}
