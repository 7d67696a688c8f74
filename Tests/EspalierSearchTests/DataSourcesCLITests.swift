// Your own data through the command line: a short search on an image folder, an .npz, a
// 300-record CIFAR-10 and a small CIFAR-100 (each run records its class names and normalisation in
// config.json), `train` then `eval` on an image folder (the model carries the statistics, eval uses
// them and refuses a dataset of other classes), and the folder's bad-image errors and skipping.

import EspalierCore
import EspalierSearch
import EspalierTestSupport
import Foundation
import XCTest

final class DataSourcesCLITests: TemporaryDirectoryTestCase {
    let tiny = ["--epochs", "1", "--channels", "4", "--cells", "2", "--nodes", "2", "--batch-size", "8", "--train-images", "32", "--eval-images", "16"]

    override func setUpWithError() throws {
        try super.setUpWithError()
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: EspalierProcess.binary), "espalier is built beside the tests (swift build)")
    }

    /// Runs a tiny search on `data`; returns the run's config.json.
    func search(_ data: [String], out: String) throws -> SearchConfig {
        let (status, output) = try EspalierProcess.run(["search"] + data + tiny + ["--out", out], cwd: dir, timeout: 300)
        XCTAssertEqual(status, 0, output)
        XCTAssertTrue(FileManager.default.fileExists(atPath: path(out + "/genotype.json")), output)
        return try JSONDecoder().decode(SearchConfig.self, from: Data(contentsOf: URL(fileURLWithPath: path(out + "/config.json"))))
    }

    func testSearch_OnAFolder_AnNPZ_CIFAR10_CIFAR100_RecordsClassesAndStatistics() throws {
        try DataFixtures.imageFolder(at: path("pets"), classes: ["dog", "cat"], perClass: 20)
        let folder = try search(["--dataset", "folder", "--data-dir", path("pets"), "--image-size", "16"], out: "run-folder")
        XCTAssertEqual(folder.classNames, ["cat", "dog"])
        XCTAssertEqual(folder.imageSize, 16)
        let pets = try Dataset.imageFolder(root: path("pets"), split: .train, imageSize: 16, accountant: MemoryAccountant()).dataset
        XCTAssertEqual(folder.normalization, DataStatistics(of: pets))
        XCTAssertEqual(folder.normalization?.mean.count, 3)

        try Data(try DataFixtures.npz(train: 48, test: 16, classes: 3)).write(to: URL(fileURLWithPath: path("d.npz")))
        let npz = try search(["--dataset", "npz", "--data-dir", path("d.npz")], out: "run-npz")
        XCTAssertEqual(npz.classNames?.count, 3)
        XCTAssertEqual(npz.normalization, DataStatistics(of: try NPZ.dataset(path: path("d.npz"), split: .train, accountant: MemoryAccountant())))

        try DataFixtures.cifar10(at: path("c10"), perBatch: 60, test: 300)
        let c10 = try search(["--dataset", "cifar10", "--data-dir", path("c10")], out: "run-c10")
        XCTAssertEqual(c10.classNames, Dataset.cifar10ClassNames)
        XCTAssertEqual(c10.normalization, DataStatistics(of: try Dataset.cifar10(folder: path("c10"), split: .train, accountant: MemoryAccountant())))
        XCTAssertNotEqual(c10.normalization?.mean, [0.4914, 0.4822, 0.4465], "measured, not CIFAR-10's published numbers")

        try DataFixtures.cifar100(at: path("c100"), train: 64, test: 16)
        let c100 = try search(["--dataset", "cifar100", "--data-dir", path("c100")], out: "run-c100")
        XCTAssertEqual(c100.classNames?.count, 100)
        XCTAssertEqual(c100.normalization, DataStatistics(of: try Dataset.cifar100(folder: path("c100"), split: .train, accountant: MemoryAccountant())))
    }

    func testTrainThenEval_OnAFolder_TheModelCarriesItsStatistics() throws {
        try DataFixtures.imageFolder(at: path("pets"), classes: ["dog", "cat"], perClass: 24, splitFolders: false)
        _ = try search(["--dataset", "folder", "--data-dir", path("pets"), "--test-fraction", "0.25"], out: "run")
        let data = ["--dataset", "folder", "--data-dir", path("pets"), "--test-fraction", "0.25"]
        let (status, out) = try EspalierProcess.run(["train", "--genotype", path("run/genotype.json"), "--out", path("model")] + data
                                                    + ["--epochs", "1", "--channels", "4", "--cells", "2", "--batch-size", "8"], cwd: dir, timeout: 300)
        XCTAssertEqual(status, 0, out)
        let file = try SafeTensorsFile.read(path: path("model/model.safetensors"))
        let stats = try JSONDecoder().decode(DataStatistics.self, from: Data(XCTUnwrap(file.metadata["espalier.normalization"]).utf8))
        let train = try Dataset.imageFolder(root: path("pets"), split: .train, testFraction: 0.25, accountant: MemoryAccountant()).dataset
        XCTAssertEqual(stats, DataStatistics(of: train), "the training split's statistics")
        XCTAssertEqual(file.metadata["espalier.classes"], #"["cat","dog"]"#)
        let (s2, o2) = try EspalierProcess.run(["eval", "--model", path("model")] + data, cwd: dir)
        XCTAssertEqual(s2, 0, o2)
        XCTAssertTrue(o2.contains("on 12 images"), o2)
        // The same accuracy line as training's last test score: the same test images, normalised alike.
        let trained = try XCTUnwrap(file.metadata["espalier.test_accuracy"].flatMap(Double.init))
        XCTAssertTrue(o2.contains(String(format: "accuracy %.2f%%", trained * 100)), "train said \(trained): \(o2)")
        // A model saved before the statistics were recorded is scored with the training split's, measured now:
        // the same accuracy, not the test split's own numbers.
        var old = file
        old.metadata["espalier.normalization"] = nil
        try FileManager.default.createDirectory(atPath: path("old"), withIntermediateDirectories: true)
        try old.write(path: path("old/model.safetensors"))
        let (s4, o4) = try EspalierProcess.run(["eval", "--model", path("old")] + data, cwd: dir)
        XCTAssertEqual(s4, 0, o4)
        XCTAssertTrue(o4.contains(String(format: "accuracy %.2f%%", trained * 100)), "train said \(trained): \(o4)")
        // Another dataset's classes are refused by name.
        let (s3, o3) = try EspalierProcess.run(["eval", "--model", path("model"), "--dataset", "synthetic"], cwd: dir)
        XCTAssertNotEqual(s3, 0, o3)
        XCTAssertTrue(o3.contains("was trained on cat, dog"), o3)
    }

    func testFolder_BadImage_ErrorOrSkipped_EmptyClass_MissingDataDir() throws {
        try DataFixtures.imageFolder(at: path("pets"), perClass: 20)
        try Data("garbage".utf8).write(to: URL(fileURLWithPath: path("pets/train/cat/zz-bad.jpg")))
        let args = ["search", "--dataset", "folder", "--data-dir", path("pets")] + tiny
        let (s1, o1) = try EspalierProcess.run(args + ["--out", "o1"], cwd: dir)
        XCTAssertNotEqual(s1, 0, o1)
        XCTAssertTrue(o1.contains(path("pets/train/cat/zz-bad.jpg")) && o1.contains("--skip-bad-images"), o1)
        XCTAssertFalse(o1.contains("Fatal error"), o1)
        let (s2, o2) = try EspalierProcess.run(args + ["--skip-bad-images", "--out", "o2"], cwd: dir, timeout: 300)
        XCTAssertEqual(s2, 0, o2)
        XCTAssertTrue(o2.contains("warning: skipped 1 image(s)") && o2.contains("zz-bad.jpg"), o2)
        try FileManager.default.createDirectory(atPath: path("pets/train/empty"), withIntermediateDirectories: true)
        let (s3, o3) = try EspalierProcess.run(args + ["--skip-bad-images", "--out", "o3"], cwd: dir)
        XCTAssertNotEqual(s3, 0, o3)
        XCTAssertTrue(o3.contains(path("pets/train/empty")), o3)
        let (s4, o4) = try EspalierProcess.run(["search", "--dataset", "npz"] + tiny + ["--out", "o4"], cwd: dir)
        XCTAssertNotEqual(s4, 0, o4)
        XCTAssertTrue(o4.contains("npz needs --data-dir FILE.npz"), o4)
        let (s5, o5) = try EspalierProcess.run(["search", "--dataset", "folder", "--data-dir", path("pets"), "--test-fraction", "1.5"] + tiny + ["--out", "o5"], cwd: dir)
        XCTAssertNotEqual(s5, 0, o5)
        XCTAssertTrue(o5.contains("--test-fraction must be at least 0 and below 1"), o5)
    }
}

final class DataConfigTests: XCTestCase {
    func testNewDataFields_OptionalInOldConfigs_AndRoundTrip() throws {
        let old = try JSONDecoder().decode(SearchConfig.self, from: Data(#"{"dataset": "cifar10", "dataDir": "/d", "epochs": 3}"#.utf8))
        XCTAssertNil(old.testFraction)
        XCTAssertNil(old.imageSize)
        XCTAssertNil(old.skipBadImages)
        XCTAssertNil(old.classNames)
        XCTAssertNil(old.normalization)
        var c = SearchConfig()
        c.dataset = "folder"; c.testFraction = 0.3; c.imageSize = 24; c.skipBadImages = true
        c.classNames = ["a", "b"]; c.normalization = DataStatistics(mean: [0.5], std: [0.25])
        XCTAssertEqual(try JSONDecoder().decode(SearchConfig.self, from: JSONEncoder().encode(c)), c)
        c.testFraction = 1
        XCTAssertThrowsError(try c.validate()) { XCTAssertTrue("\($0)".contains("--test-fraction"), "\($0)") }
        c.testFraction = nil; c.imageSize = 0
        XCTAssertThrowsError(try c.validate()) { XCTAssertTrue("\($0)".contains("--image-size"), "\($0)") }
    }
}
