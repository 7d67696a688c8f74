// A run's config.json from an older version (fields added since are missing) still loads, so
// `--resume` continues it; what is there is kept, what is missing takes its default.

import EspalierSearch
import Foundation
import XCTest

final class ConfigCompatibilityTests: XCTestCase {
    func testOldConfigJSON_MissingNewerFields_LoadsWithDefaults() throws {
        // The shape of a config.json written before regularizers, schedules, channel gates and
        // the space's partial channels / hyper-connected options existed.
        let old = """
        {"space": {"inputChannels": 1, "classes": 10, "channels": 8, "cells": 5, "nodes": 4, "multiplier": 4,
                   "stemMultiplier": 3, "ops": ["espalier.op.none/1", "espalier.op.skip_connect/1"]},
         "strategy": "espalier.strategy.darts/1", "strategySettings": {"order": "first"},
         "gate": "espalier.gate.softmax/1", "gateSettings": {}, "opSettings": {},
         "dataset": "fashion-mnist", "trainImages": 2000, "batchSize": 32, "epochs": 3,
         "learningRate": 0.05, "seed": 7}
        """
        let c = try JSONDecoder().decode(SearchConfig.self, from: Data(old.utf8))
        XCTAssertEqual(c.space.channels, 8)
        XCTAssertEqual(c.space.ops.count, 2)
        XCTAssertEqual(c.strategySettings["order"], "first")
        XCTAssertEqual(c.trainImages, 2000)
        XCTAssertEqual(c.epochs, 3)
        XCTAssertEqual(c.learningRate, 0.05)
        XCTAssertEqual(c.seed, 7)
        let defaults = SearchConfig()
        XCTAssertEqual(c.regularizers, defaults.regularizers)
        XCTAssertEqual(c.methods, defaults.methods)
        XCTAssertNil(c.channelGate)
        XCTAssertEqual(c.momentum, defaults.momentum)
        XCTAssertEqual(c.archWeightDecay, defaults.archWeightDecay)
        XCTAssertEqual(c.space.partialChannels, 1)
        XCTAssertFalse(c.space.hyperConnected)
        XCTAssertNoThrow(try c.validate())
    }

    /// A search started before `affineOps` existed resumes with the ops it was built with (DARTS's
    /// search ops), not with GSparsity's new `affine_ops` default; a newer config is left alone.
    func testResumedConfig_FromBeforeAffineOps_KeepsTheSearchOps() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("espalier-cfg-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = (dir as NSString).appendingPathComponent("config.json")
        let old = #"{"space": {"channels": 8, "cells": 5}, "strategy": "espalier.strategy.gsparsity/1", "strategySettings": {}}"#
        try Data(old.utf8).write(to: URL(fileURLWithPath: path))
        XCTAssertEqual(try SearchRun.loadConfig(dir).strategySettings["affine_ops"], "false")
        var c = SearchConfig()
        c.strategy = "espalier.strategy.gsparsity/1"
        try JSONEncoder().encode(c).write(to: URL(fileURLWithPath: path))
        XCTAssertNil(try SearchRun.loadConfig(dir).strategySettings["affine_ops"], "written with affineOps: the strategy's default applies as it did at the start")
    }

    func testConfig_RoundTripsThroughJSON() throws {
        var c = SearchConfig.quick
        c.regularizers = ["espalier.regularizer.beta-decay/1"]
        c.regularizerSettings = ["espalier.regularizer.beta-decay/1": ["lambda": "0.5"]]
        c.methods = ["tau.schedule": "gdas-linear"]
        c.channelGate = "espalier.gate.figs/1"
        c.memoryBudget = 123_456_789
        c.space.partialChannels = 4
        let back = try JSONDecoder().decode(SearchConfig.self, from: JSONEncoder().encode(c))
        XCTAssertEqual(back, c)
    }

    func testMistypedField_IsStillAnError() {
        let bad = #"{"epochs": "many"}"#
        XCTAssertThrowsError(try JSONDecoder().decode(SearchConfig.self, from: Data(bad.utf8)))
    }
}
