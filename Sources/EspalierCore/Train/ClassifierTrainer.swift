// Supervised training of a fixed classifier: the loop every later trainer builds on.
// One step = forward, softmax cross-entropy, backward, optional gradient clipping, SGD update.
// The memory of a step can be predicted first by running the same step in a dry-run accountant.
// Not here: architecture parameters or bilevel search (the search trainer comes with the plugin ABI).

import Foundation

/// A network that maps images (N, C, H, W) to logits (N, classes).
public protocol Classifier: Module {
    func logits(_ g: Graph, _ x: Variable) throws -> Variable
}

/// A network with an auxiliary classifier: the trainer adds `auxiliaryWeight`·CE(aux).
public protocol AuxiliaryClassifier: Classifier {
    func logitsWithAuxiliary(_ g: Graph, _ x: Variable) throws -> (logits: Variable, auxiliary: Variable?)
    var auxiliaryWeight: Float { get }
    /// Called by the trainer at the start of each epoch (e.g. a drop-path schedule).
    func epochStarted(_ epoch: Int, of total: Int)
}

public struct TrainConfig: Codable, Sendable {
    public var epochs = 3
    public var batchSize = 128
    public var learningRate: Float = 0.05
    public var minLearningRate: Float = 0
    public var momentum: Float = 0.9
    public var weightDecay: Float = 5e-4
    public var gradClip: Float? = 5
    public var seed: UInt64 = 0
    public var augmentation = Augmentation()
    /// Anneal the learning rate every step (true) or once per epoch (false, as DARTS does).
    public var annealPerStep = true
    public init() {}
}

/// What one epoch did.
public struct EpochReport: Codable, Sendable {
    public var epoch: Int
    public var trainLoss: Double
    public var trainAccuracy: Double
    public var testLoss: Double
    public var testAccuracy: Double
    public var seconds: Double
    public var learningRate: Float
    public var peakBytes: Int
    public var peakByCategory: [String: Int]
}

/// Reports progress of the steps of an epoch (a progress bar in the CLI, nothing in tests).
public protocol ProgressSink: AnyObject {
    func step(_ done: Int, of total: Int, loss: Double, accuracy: Double)
    func epochDone(_ report: EpochReport)
}

public final class ClassifierTrainer {
    public let model: Classifier
    public let accountant: MemoryAccountant
    public let config: TrainConfig
    public let optimizer: SGD
    public let schedule: CosineSchedule
    public let graph: Graph

    public init(model: Classifier, accountant: MemoryAccountant, config: TrainConfig) throws {
        self.model = model
        self.accountant = accountant
        self.config = config
        self.optimizer = try accountant.withOwner("optimizer") {
            try SGD(parameters: model.parameters, learningRate: config.learningRate, momentum: config.momentum, weightDecay: config.weightDecay)
        }
        self.schedule = CosineSchedule(maxLR: config.learningRate, minLR: config.minLearningRate, totalEpochs: config.epochs)
        self.graph = Graph(accountant: accountant, seed: config.seed &+ 17)
    }

    /// One training step on a batch. Returns (mean loss, correct predictions).
    @discardableResult
    public func trainStep(images: Tensor, labels: [Int32]) throws -> (loss: Double, correct: Int) {
        graph.training = true
        optimizer.zeroGrad()
        let (loss, correct) = try accountant.withOwner("step") { () throws -> (Double, Int) in
            var logits: Variable, loss: Variable
            if let aux = model as? AuxiliaryClassifier {
                let (main, auxLogits) = try aux.logitsWithAuxiliary(graph, graph.constant(images))
                logits = main
                loss = try graph.softmaxCrossEntropy(main, labels: labels)
                if let auxLogits {
                    loss = try graph.add(loss, try graph.scale(try graph.softmaxCrossEntropy(auxLogits, labels: labels), by: aux.auxiliaryWeight))
                }
            } else {
                logits = try model.logits(graph, graph.constant(images))
                loss = try graph.softmaxCrossEntropy(logits, labels: labels)
            }
            let value = graph.computing ? Double(loss.value[0]) : 0
            let correct = graph.computing ? logits.value.correctCount(labels: labels) : 0
            try graph.backward(loss)
            return (value, correct)
        }
        if let clip = config.gradClip { clipGradNorm(model.parameters, maxNorm: clip) }
        optimizer.step()
        return (loss, correct)
    }

    /// Mean loss and accuracy on a data view, in evaluation mode without gradients.
    public func evaluate(_ view: DataView, batchSize: Int? = nil) throws -> (loss: Double, accuracy: Double) {
        let loader = try DataLoader(view, batchSize: batchSize ?? config.batchSize, shuffle: false)
        graph.training = false
        defer { graph.training = true }
        var lossSum = 0.0, correct = 0, seen = 0
        try graph.noGrad {
            while let batch = try loader.next(accountant: accountant) {
                let logits = try accountant.withOwner("eval") { try model.logits(graph, graph.constant(batch.images)) }
                let loss = try graph.softmaxCrossEntropy(logits, labels: batch.labels)
                lossSum += Double(loss.value[0]) * Double(batch.size)
                correct += logits.value.correctCount(labels: batch.labels)
                seen += batch.size
            }
        }
        return (lossSum / Double(max(seen, 1)), Double(correct) / Double(max(seen, 1)))
    }

    /// Trains for `config.epochs` epochs, evaluating on `test` after each.
    public func fit(train: DataView, test: DataView, progress: ProgressSink? = nil) throws -> [EpochReport] {
        let loader = try DataLoader(train, batchSize: config.batchSize, shuffle: true, dropLast: false,
                                    augmentation: config.augmentation, seed: config.seed)
        var reports: [EpochReport] = []
        for epoch in 0..<config.epochs {
            let lr = schedule.learningRate(epoch: epoch)
            optimizer.learningRate = lr
            (model as? AuxiliaryClassifier)?.epochStarted(epoch, of: config.epochs)
            accountant.resetPeak()
            let start = DispatchTime.now().uptimeNanoseconds
            var lossSum = 0.0, correct = 0, seen = 0, step = 0
            let steps = loader.batchesPerEpoch
            while let batch = try loader.next(accountant: accountant) {
                if config.annealPerStep {
                    optimizer.learningRate = schedule.learningRate(progress: Double(epoch) + Double(step) / Double(max(steps, 1)))
                }
                let (loss, c) = try trainStep(images: batch.images, labels: batch.labels)
                lossSum += loss * Double(batch.size); correct += c; seen += batch.size; step += 1
                progress?.step(step, of: steps, loss: lossSum / Double(seen), accuracy: Double(correct) / Double(seen))
            }
            let (testLoss, testAcc) = try evaluate(test)
            var byCategory: [String: Int] = [:]
            for c in MemoryCategory.allCases { byCategory[c.name] = accountant.peakByCategory[c] }
            let report = EpochReport(epoch: epoch + 1, trainLoss: lossSum / Double(max(seen, 1)),
                                     trainAccuracy: Double(correct) / Double(max(seen, 1)),
                                     testLoss: testLoss, testAccuracy: testAcc,
                                     seconds: Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9,
                                     learningRate: lr, peakBytes: accountant.peakTotal, peakByCategory: byCategory)
            reports.append(report)
            progress?.epochDone(report)
        }
        return reports
    }

    /// Predicts the peak memory of one training step without computing anything: the model is
    /// built by `makeModel` in a dry-run accountant and one step runs on a shape-only batch.
    public static func predictStepPeak(config: TrainConfig, inputShape: [Int], budget: Int? = nil,
                                       makeModel: (ParameterFactory) throws -> Classifier) throws -> MemoryAccountant {
        try predictStep(config: config, inputShape: inputShape, budget: budget, makeModel: makeModel).accountant
    }

    /// The dry-run step of `predictStepPeak`, with the FLOPs it counted and what each recomputed
    /// segment measured (Graph.segmentMeasures).
    public static func predictStep(config: TrainConfig, inputShape: [Int], budget: Int? = nil, makeModel: (ParameterFactory) throws -> Classifier)
        throws -> (accountant: MemoryAccountant, flops: Int, segments: [String: SegmentMeasure]) {
        let dry = MemoryAccountant(mode: .dryRun, budget: budget)
        let factory = ParameterFactory(accountant: dry, seed: config.seed)
        let model = try dry.withOwner("model") { try makeModel(factory) }
        let trainer = try ClassifierTrainer(model: model, accountant: dry, config: config)
        trainer.graph.segmentMeasures = [:]
        let batch = try dry.withOwner("data") { try Tensor(shape: inputShape, category: .data, accountant: dry) }
        try trainer.trainStep(images: batch, labels: Array(repeating: 0, count: inputShape[0]))
        return (dry, trainer.graph.flops, trainer.graph.segmentMeasures ?? [:])
    }

    /// The FLOPs of one image's forward pass (evaluation mode) through the model `makeModel`
    /// builds in a dry-run accountant: nothing is computed or allocated.
    public static func forwardFlops(imageShape: [Int], makeModel: (MemoryAccountant) throws -> Classifier) throws -> Int {
        let dry = MemoryAccountant(mode: .dryRun)
        let model = try makeModel(dry)
        let g = Graph(accountant: dry)
        g.training = false
        let x = try Tensor(shape: [1] + imageShape, category: .data, accountant: dry)
        _ = try g.noGrad { try model.logits(g, g.constant(x)) }
        return g.flops
    }
}

extension EpochReport {
    /// The epoch as TensorBoard scalars (`espalier train` writes them to OUT/tb at step = the epoch):
    /// loss/{train,test}, accuracy/{train,test}, learning_rate, memory/peak_bytes,
    /// memory/peak/<category>, memory/predicted_peak_bytes (the dry run's step peak with the
    /// datasets, when given) and time/epoch_seconds.
    public func tensorBoardValues(predictedPeak: Int?) -> [TensorBoardValue] {
        var v: [TensorBoardValue] = [
            .scalar("loss/train", Float(trainLoss)), .scalar("loss/test", Float(testLoss)),
            .scalar("accuracy/train", Float(trainAccuracy)), .scalar("accuracy/test", Float(testAccuracy)),
            .scalar("learning_rate", learningRate), .scalar("memory/peak_bytes", Float(peakBytes)),
            .scalar("time/epoch_seconds", Float(seconds)),
        ]
        if let p = predictedPeak { v.append(.scalar("memory/predicted_peak_bytes", Float(p))) }
        for (c, bytes) in peakByCategory.sorted(by: { $0.key < $1.key }) { v.append(.scalar("memory/peak/" + c, Float(bytes))) }
        return v
    }
}
