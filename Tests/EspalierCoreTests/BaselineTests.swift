// End to end: the baseline CNN trains on real and synthetic data, its step's peak memory is
// predicted exactly by a dry run, and the whole network's gradient matches finite differences.

import EspalierCore
import EspalierTestSupport
import XCTest

final class BaselineTests: XCTestCase {
    func testCompositeNetwork_GradientsMatchFiniteDifferences() throws {
        // A small network of many kernels: conv → BN → ReLU → depthwise → pointwise → max-pool → GAP → linear → CE.
        let acc = MemoryAccountant()
        let x = try randomTensor([2, 2, 6, 6], acc, seed: 1)
        let w1 = try randomTensor([4, 2, 3, 3], acc, seed: 2, bound: 0.5)
        let wd = try randomTensor([4, 1, 3, 3], acc, seed: 3, bound: 0.5)
        let wp = try randomTensor([3, 4, 1, 1], acc, seed: 4, bound: 0.5)
        let fcw = try randomTensor([5, 3], acc, seed: 5, bound: 0.5)
        try GradCheck(eps: 5e-3, rtol: 3e-2, atol: 3e-3).check("composite", inputs: [x, w1, wd, wp, fcw]) { g, v in
            var h = try g.conv2d(v[0], v[1], padding: 1)
            h = try g.batchNorm(h, gamma: nil, beta: nil, runningMean: nil, runningVar: nil)
            h = try g.relu(h)
            h = try g.conv2d(h, v[2], padding: 2, dilation: 2, groups: 4)
            h = try g.conv2d(h, v[3])
            h = try g.avgPool2d(h, kernel: 3, stride: 2, padding: 1)
            h = try g.globalAvgPool(h)
            let logits = try g.linear(h, weight: v[4])
            return try g.softmaxCrossEntropy(logits, labels: [1, 4])
        }
    }

    func testDryRun_PredictsBaselineStepPeakExactly() throws {
        var config = TrainConfig()
        config.batchSize = 16
        let make: (ParameterFactory) throws -> Classifier = { f in try BaselineCNN(f, inChannels: 1, classes: 10, width: 8) }
        let predicted = try ClassifierTrainer.predictStepPeak(config: config, inputShape: [16, 1, 28, 28], makeModel: make)

        let acc = MemoryAccountant()
        let model = try acc.withOwner("model") { try make(ParameterFactory(accountant: acc, seed: 0)) }
        let trainer = try ClassifierTrainer(model: model, accountant: acc, config: config)
        let batch = try acc.withOwner("data") { try randomTensor([16, 1, 28, 28], acc, seed: 9) }
        try trainer.trainStep(images: batch, labels: (0..<16).map { Int32($0 % 10) })
        XCTAssertEqual(predicted.peakTotal, acc.peakTotal)
        XCTAssertEqual(predicted.peakByCategory, acc.peakByCategory)
        // The owner table is tagged down to layers.
        XCTAssertTrue(acc.ownerTable().contains { $0.owner == "model/block1/conv/weight" })
        XCTAssertGreaterThan(acc.peakBytes(ownerPrefix: "model/block0").total, 0)
    }

    func testBaseline_LearnsSyntheticData() throws {
        let acc = MemoryAccountant()
        let train = try Dataset.synthetic(count: 600, channels: 1, height: 16, width: 16, classes: 4, seed: 1, accountant: acc)
        let test = try Dataset.synthetic(count: 200, channels: 1, height: 16, width: 16, classes: 4, seed: 1, split: .test, accountant: acc)
        var config = TrainConfig()
        config.epochs = 3
        config.batchSize = 32
        config.learningRate = 0.05
        let model = try BaselineCNN(ParameterFactory(accountant: acc, seed: 3), inChannels: 1, classes: 4, width: 8)
        let trainer = try ClassifierTrainer(model: model, accountant: acc, config: config)
        let reports = try trainer.fit(train: train.all, test: test.all)
        XCTAssertEqual(reports.count, 3)
        XCTAssertLessThan(reports[2].trainLoss, reports[0].trainLoss)
        XCTAssertGreaterThan(reports[2].testAccuracy, 0.9, "synthetic classes are easy: \(reports.map { $0.testAccuracy })")
    }

    func testBaseline_FashionMNISTSubset_LearnsWellAboveChance() throws {
        let acc = MemoryAccountant()
        let train = try Prerequisite.fashionMNIST(.train, accountant: acc), test = try Prerequisite.fashionMNIST(.test, accountant: acc)
        var config = TrainConfig()
        config.epochs = 2
        config.batchSize = 64
        let model = try BaselineCNN(ParameterFactory(accountant: acc, seed: 0), inChannels: 1, classes: 10, width: 8)
        let trainer = try ClassifierTrainer(model: model, accountant: acc, config: config)
        let reports = try trainer.fit(train: train.all.prefix(3000), test: test.all.prefix(1000))
        XCTAssertGreaterThan(reports.last!.testAccuracy, 0.6, "\(reports.map { $0.testAccuracy })")
    }

    func testBudget_StopsTrainingWithNamedError() throws {
        let acc = MemoryAccountant()
        let model = try BaselineCNN(ParameterFactory(accountant: acc, seed: 0), inChannels: 1, classes: 10, width: 8)
        var config = TrainConfig()
        config.batchSize = 32
        let trainer = try ClassifierTrainer(model: model, accountant: acc, config: config)
        let batch = try randomTensor([32, 1, 28, 28], acc, seed: 1)
        acc.budget = acc.currentTotal + 1 << 20   // 1 MiB for the step: far too little
        XCTAssertThrowsError(try trainer.trainStep(images: batch, labels: Array(repeating: 1, count: 32))) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("memory budget exceeded") && text.contains("block0/"), text)
        }
        trainer.graph.clearTape()
        acc.budget = nil
        XCTAssertNoThrow(try trainer.trainStep(images: batch, labels: Array(repeating: 1, count: 32)))
    }
}
