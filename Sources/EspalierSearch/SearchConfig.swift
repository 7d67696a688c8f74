// Everything a search run is made of, saved as OUT/config.json so that `--resume OUT` rebuilds
// the same run. Defaults are DARTS's (GUIDE.md §1).

import CEspalierSDK
import EspalierCore
import EspalierHost
import Foundation

public struct SearchConfig: Codable, Equatable, Sendable {
    public var space = SearchSpaceDescription()
    public var strategy = "espalier.strategy.darts/1"
    public var strategySettings: [String: String] = [:]
    public var gate = "espalier.gate.softmax/1"
    public var gateSettings: [String: String] = [:]
    /// The gate for role "channel" (per-channel masks of ops that gate their own channels through
    /// `graph_gate`, e.g. FiGS's espalier.gate.figs/1), one instance per logits length; nil = none.
    public var channelGate: String? = nil
    public var channelGateSettings: [String: String]? = nil
    /// Parameter settings of candidate ops, by op id.
    public var opSettings: [String: [String: String]] = [:]
    /// Regularizers (ids) and their settings, by id.
    public var regularizers: [String] = []
    public var regularizerSettings: [String: [String: String]] = [:]
    /// Chosen dynamic methods, slot → method name (e.g. "tau.schedule" → "linear-decay").
    public var methods: [String: String] = [:]
    /// The search method by name (`--method`, or the strategy's own method), e.g. "gdas"; nil when
    /// the components were chosen one by one.
    public var method: String? = nil

    public var dataset = "fashion-mnist"
    public var dataDir: String? = nil
    /// `--dataset folder` without train/ and test/: the share of each class held out as test; nil = 0.2.
    public var testFraction: Double? = nil
    /// `--dataset folder`: the side images are resized to; nil = the first training image's size.
    public var imageSize: Int? = nil
    /// `--dataset folder`: skip (and count) files that cannot be decoded instead of stopping; nil = false.
    public var skipBadImages: Bool? = nil
    /// The training data's class names, in label order, as the run found them (written by the run).
    public var classNames: [String]? = nil
    /// The per-channel statistics the run normalised with, measured on the
    /// training data (written by the run; a test split is normalised with them).
    public var normalization: DataStatistics? = nil
    /// Use only the first N training images (before the 50/50 split); nil = all.
    public var trainImages: Int? = nil
    /// Validation images scored at the end of each epoch; nil = the whole validation half.
    public var evalImages: Int? = nil
    public var batchSize = 64
    public var epochs = 50

    public var learningRate: Float = 0.025
    public var minLearningRate: Float = 0.001
    public var momentum: Float = 0.9
    public var weightDecay: Float = 3e-4
    public var gradClip: Float = 5
    public var archLearningRate: Float = 3e-4
    public var archBeta1: Float = 0.5
    public var archBeta2: Float = 0.999
    public var archWeightDecay: Float = 1e-3

    public var seed: UInt64 = 2
    public var memoryBudget: Int? = nil
    /// Before each evaluation, recompute batch norm's running statistics over this many training
    /// batches (0 = off); nil = the strategy's `bn_recalibration` parameter (GSparsity's: 20), else 0.
    public var bnRecalibrationBatches: Int? = nil
    /// Ghost batch norm (`--bn-groups N`): training-mode batch norm normalises each batch in N
    /// slices, as N ranks normalise their shares (Graph.batchNormGroups); nil = 1.
    public var bnGroups: Int? = nil
    public var pluginDirs: [String] = []
    /// `--recompute` (RecomputePlan.swift); nil = none.
    public var recompute: RecomputeMode? = nil
    /// `--recompute auto`: the segments its planner chose to recompute (`cell3`, `cell3/node1`;
    /// written before the run, empty when the search fits as it is); nil before it chose.
    public var recomputeSegments: [String]? = nil

    public init() {}

    /// The short default search (`espalier search` with no arguments): minutes on 2 cores.
    public static var quick: SearchConfig {
        var c = SearchConfig()
        c.space.channels = 8
        c.space.cells = 5
        c.trainImages = 2000
        c.evalImages = 1000
        c.batchSize = 32
        c.epochs = 2
        return c
    }

    /// The config with the space options (`SpaceOption.all`) a strategy declares as parameters
    /// applied, each from the user's setting or the parameter's default: parsed in the strategy's
    /// order (the first bad value is the error, naming the strategy and the option), applied in
    /// that order, those that read the others' result (`section_cells`) last. A strategy that
    /// needs no architecture parameters (ES_REQUIRES_NO_ARCH_PARAMS) makes the space sum its ops (`sumOps`).
    public func withStrategySpace(_ strategy: Component) throws -> SearchConfig {
        var c = self
        c.space.sumOps = strategy.strategyRequirements & UInt32(ES_REQUIRES_NO_ARCH_PARAMS) != 0
        var changes: [SpaceOption.Change] = [], last: [SpaceOption.Change] = []
        for spec in strategy.params {
            guard let option = SpaceOption.named(spec.name) else { continue }
            let change: SpaceOption.Change
            do { change = try option.parse(strategySettings[spec.name] ?? spec.defaultValue) } catch let e as SpaceOption.InvalidValue {
                throw EspalierError.config("\(strategy.id): \(e.message)")
            }
            if option.appliesLast { last.append(change) } else { changes.append(change) }
        }
        for change in changes + last { change(&c) }
        return c
    }

    public func validate() throws {
        try space.validate()
        guard batchSize > 0 else { throw EspalierError.config("--batch-size must be positive (got \(batchSize))") }
        guard epochs > 0 else { throw EspalierError.config("--epochs must be positive (got \(epochs))") }
        if let t = trainImages {
            guard t > 0 else { throw EspalierError.config("--train-images must be a positive number of images (got \(t)); leave it out to use them all") }
            guard t >= 2 * batchSize else {
                throw EspalierError.config("--train-images \(t) leaves fewer than one batch of \(batchSize) in each half; use at least \(2 * batchSize)")
            }
        }
        if let e = evalImages, e <= 0 {
            throw EspalierError.config("--eval-images must be a positive number of images (got \(e)); leave it out to score the whole validation half")
        }
        // Every rate and coefficient a finite number in its range: an inf or nan here would only
        // show up as a diverged search (or a log that cannot be written) much later.
        let checks: [(String, Float, Bool)] = [
            ("--lr (learning rate)", learningRate, learningRate > 0), ("the minimum learning rate", minLearningRate, minLearningRate >= 0),
            ("the momentum", momentum, momentum >= 0 && momentum < 1), ("the weight decay", weightDecay, weightDecay >= 0),
            ("the gradient clip", gradClip, gradClip > 0), ("--arch-lr (architecture learning rate)", archLearningRate, archLearningRate >= 0),
            ("the Adam β1", archBeta1, archBeta1 >= 0 && archBeta1 < 1), ("the Adam β2", archBeta2, archBeta2 >= 0 && archBeta2 < 1),
            ("--arch-weight-decay", archWeightDecay, archWeightDecay >= 0),
        ]
        for (name, v, ok) in checks where !v.isFinite || !ok {
            throw EspalierError.config("\(name) is \(v); it must be a finite number"
                                       + (name.hasPrefix("--lr") || name.hasPrefix("the gradient") ? " > 0" : " ≥ 0")
                                       + (name.contains("β") || name == "the momentum" ? " and < 1" : "") + " (e.g. --lr 0.025, --arch-lr 3e-4)")
        }
        if let f = testFraction, !(f >= 0 && f < 1) {
            throw EspalierError.config("--test-fraction must be at least 0 and below 1 (got \(f)), e.g. 0.2")
        }
        if let n = imageSize, n < 1 || n > 4096 { throw EspalierError.config("--image-size must be between 1 and 4096 pixels (got \(n))") }
        if let b = bnRecalibrationBatches, b < 0 { throw EspalierError.config("--bn-recalibration must be ≥ 0 batches (got \(b))") }
        if let g = bnGroups {
            guard g >= 1, g <= batchSize else {
                throw EspalierError.config("--bn-groups \(g) must be between 1 and the batch size \(batchSize) (each group normalises at least one sample)")
            }
        }
    }

}

extension SearchConfig {
    enum CodingKeys: String, CodingKey {
        case space, strategy, strategySettings, gate, gateSettings, channelGate, channelGateSettings, opSettings, regularizers,
             regularizerSettings, methods, dataset, dataDir, trainImages, evalImages, batchSize, epochs, learningRate, minLearningRate,
             momentum, weightDecay, gradClip, archLearningRate, archBeta1, archBeta2, archWeightDecay, seed, memoryBudget, pluginDirs,
             bnRecalibrationBatches, bnGroups, testFraction, imageSize, skipBadImages, classNames, normalization, method,
             recompute, recomputeSegments
    }

    /// Every field optional (the default where missing), so the config.json of a run written
    /// before a field existed still loads and `--resume` continues it.
    public init(from decoder: Decoder) throws {
        self.init()
        let c = try decoder.container(keyedBy: CodingKeys.self)
        func read<T: Decodable>(_ key: CodingKeys, _ value: inout T) throws { if let v = try c.decodeIfPresent(T.self, forKey: key) { value = v } }
        try read(.space, &space); try read(.strategy, &strategy); try read(.strategySettings, &strategySettings)
        try read(.gate, &gate); try read(.gateSettings, &gateSettings)
        channelGate = try c.decodeIfPresent(String.self, forKey: .channelGate)
        channelGateSettings = try c.decodeIfPresent([String: String].self, forKey: .channelGateSettings)
        try read(.opSettings, &opSettings); try read(.regularizers, &regularizers); try read(.regularizerSettings, &regularizerSettings)
        try read(.methods, &methods); try read(.dataset, &dataset)
        dataDir = try c.decodeIfPresent(String.self, forKey: .dataDir)
        trainImages = try c.decodeIfPresent(Int.self, forKey: .trainImages)
        evalImages = try c.decodeIfPresent(Int.self, forKey: .evalImages)
        try read(.batchSize, &batchSize); try read(.epochs, &epochs)
        try read(.learningRate, &learningRate); try read(.minLearningRate, &minLearningRate); try read(.momentum, &momentum)
        try read(.weightDecay, &weightDecay); try read(.gradClip, &gradClip); try read(.archLearningRate, &archLearningRate)
        try read(.archBeta1, &archBeta1); try read(.archBeta2, &archBeta2); try read(.archWeightDecay, &archWeightDecay)
        try read(.seed, &seed)
        memoryBudget = try c.decodeIfPresent(Int.self, forKey: .memoryBudget)
        try read(.pluginDirs, &pluginDirs)
        bnRecalibrationBatches = try c.decodeIfPresent(Int.self, forKey: .bnRecalibrationBatches)
        bnGroups = try c.decodeIfPresent(Int.self, forKey: .bnGroups)
        testFraction = try c.decodeIfPresent(Double.self, forKey: .testFraction)
        imageSize = try c.decodeIfPresent(Int.self, forKey: .imageSize)
        skipBadImages = try c.decodeIfPresent(Bool.self, forKey: .skipBadImages)
        classNames = try c.decodeIfPresent([String].self, forKey: .classNames)
        normalization = try c.decodeIfPresent(DataStatistics.self, forKey: .normalization)
        method = try c.decodeIfPresent(String.self, forKey: .method)
        recompute = try c.decodeIfPresent(RecomputeMode.self, forKey: .recompute)
        recomputeSegments = try c.decodeIfPresent([String].self, forKey: .recomputeSegments)
    }
}

/// Per-channel mean and standard deviation of pixel/255 that a dataset is normalised with.
public struct DataStatistics: Codable, Equatable, Sendable {
    public var mean: [Float]
    public var std: [Float]
    public init(mean: [Float], std: [Float]) { self.mean = mean; self.std = std }
    public init(of dataset: Dataset) { self.init(mean: dataset.mean, std: dataset.std) }
}
