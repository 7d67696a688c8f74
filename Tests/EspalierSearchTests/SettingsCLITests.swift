// The settings promises through the `espalier` executable (issue 14): `plugins` says when a
// library was refused (and fails with --strict), plugins' debug lines only with --verbose,
// skipped plugin folders are warned about, `train --set` overrides a genotype's recorded op
// settings, and a search prints each regularizer's term and the architecture loss per epoch.

import EspalierCore
import EspalierHost
import EspalierSearch
import EspalierTestSupport
import Foundation
import XCTest

final class SettingsCLITests: XCTestCase {
    var binary: String { (PluginSearchPath.executableDirectory() ?? ".") + "/espalier" }

    /// Runs the executable; returns (status, stdout, stderr).
    func espalier(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: binary), "espalier is built beside the tests (swift build --build-tests)")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        // Read both to the end before waiting (a full pipe would block the child).
        final class Box: @unchecked Sendable { var data = Data() }
        let errBox = Box()
        let reader = Thread { errBox.data = err.fileHandleForReading.readDataToEndOfFile() }
        reader.start()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        while !reader.isFinished { Thread.sleep(forTimeInterval: 0.01) }
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: errBox.data, as: UTF8.self))
    }

    func testPlugins_RefusedLibrary_IsTheLastLine_AndStrictFails_DebugLinesOnlyVerbose_SkippedFoldersWarned() throws {
        let dir = try PluginFixtures.tempDir()
        try PluginFixtures.build("libespalier-fixture.so", in: dir)   // logs "fixture initialised" at debug level
        try "garbage".write(toFile: dir + "/libespalier-zz-broken.so", atomically: true, encoding: .utf8)
        let plain = try espalier(["plugins", "--plugin-dir", dir, "--plugin-dir", dir + "/nowhere"])
        XCTAssertEqual(plain.status, 0, plain.out + plain.err)
        let last = plain.out.split(separator: "\n").last.map(String.init) ?? ""
        XCTAssertEqual(last, "1 library was refused (above); --strict makes this an error")
        XCTAssertFalse(plain.err.contains("[plugin debug]"), plain.err)
        XCTAssertTrue(plain.err.contains("warning: plugin folder \(dir)/nowhere does not exist; skipped"), plain.err)
        let strict = try espalier(["plugins", "--plugin-dir", dir, "--strict"])
        XCTAssertEqual(strict.status, 1, strict.out + strict.err)
        let verbose = try espalier(["plugins", "--plugin-dir", dir, "--verbose"])
        XCTAssertTrue(verbose.err.contains("[plugin debug] fixture initialised"), verbose.err)
    }

    func testTrain_UsesTheGenotypesOpSettings_AndSetOverridesThem() throws {
        let fixture = try PluginFixtures.tempDir()
        let source = PluginFixtures.repoRoot.appendingPathComponent("Tests/EspalierHostTests/Fixtures/settings_fixture.c").path
        try PluginFixtures.build("libespalier-settings.so", in: fixture, source: source)
        let dir = try PluginFixtures.tempDir("train")
        let genotype = dir + "/genotype.json"
        var g = Genotype(normal: [.init("stamp", 0), .init("stamp", 1)], normalConcat: [2], reduce: [.init("scaled", 0), .init("scaled", 1)],
                         reduceConcat: [2], opIDs: ["scaled": "org.settings.op.scaled/1", "stamp": "org.settings.op.stamp/1"])
        g.settings = ["org.settings.op.scaled/1": ["scale": "0.25", "attr": "stride"]]
        try g.save(path: genotype)
        let common = ["train", "--genotype", genotype, "--plugin-dir", fixture, "--dataset", "synthetic", "--channels", "4", "--cells", "3",
                      "--epochs", "1", "--batch-size", "16", "--train-images", "32", "--test-images", "16"]
        let recorded = try espalier(common + ["--out", dir + "/a"])
        XCTAssertEqual(recorded.status, 0, recorded.out + recorded.err)
        XCTAssertTrue(recorded.out.contains("op settings: scaled attr=stride scale=0.25"), recorded.out)
        // 32 images in batches of 16, one epoch: the ops' calls carry the training's epoch and step.
        XCTAssertTrue(recorded.err.contains("[plugin info] stamp training=1 epoch=0/1 step=1/2"), recorded.err)
        let overridden = try espalier(common + ["--out", dir + "/b", "--set", "scaled.scale=0.5"])
        XCTAssertEqual(overridden.status, 0, overridden.out + overridden.err)
        XCTAssertTrue(overridden.out.contains("op settings: scaled attr=stride scale=0.5"), overridden.out)
        let meta = try SafeTensorsFile.read(path: dir + "/b/model.safetensors").metadata["espalier.network"] ?? ""
        XCTAssertTrue(meta.contains("\"scale\":\"0.5\""), "the saved model records the settings it was trained with")
        let bad = try espalier(common + ["--out", dir + "/c", "--set", "scaled.nope=1"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue((bad.out + bad.err).contains("org.settings.op.scaled/1 has no parameter 'nope'; its parameters: scale, attr"), bad.out + bad.err)
    }

    func testSearch_PrintsEachRegularizerTermAndTheArchitectureLoss() throws {
        let fixture = try PluginFixtures.tempDir()
        let source = PluginFixtures.repoRoot.appendingPathComponent("Tests/EspalierHostTests/Fixtures/settings_fixture.c").path
        try PluginFixtures.build("libespalier-settings.so", in: fixture, source: source)
        let out = try PluginFixtures.tempDir("search") + "/run"
        let r = try espalier(["search", "--plugin-dir", fixture, "--dataset", "synthetic", "--train-images", "64", "--eval-images", "16",
                              "--channels", "4", "--cells", "2", "--nodes", "2", "--batch-size", "16", "--epochs", "1",
                              "--op", "espalier.op.none/1", "--op", "org.settings.op.scaled/1",
                              "--regularizer", "org.settings.regularizer.count/1", "--regularizer", "org.settings.regularizer.count/1",
                              "--set", "count#2.weight=3", "--out", out])
        XCTAssertEqual(r.status, 0, r.out + r.err)
        let line = r.out.split(separator: "\n").first { $0.hasPrefix("  arch loss ") }.map(String.init) ?? "none in: " + r.out
        XCTAssertTrue(line.contains("terms: count#1 1, count#2 3"), line)
        let g = try Genotype.load(path: out + "/genotype.json")
        XCTAssertEqual(g.settings?["org.settings.regularizer.count/1#2"], ["weight": "3"])
    }
}
