// What the search services do for strategies that score or train children (random search,
// PARSEC): the loss of the supernet in its current op states on one of the batches of the step
// being taken (the services hold them while the trainer takes it), and `trainChild`: a genotype
// built as a DiscreteNetwork at the run's channels and cells, trained from scratch for a number of
// SGD steps on the weight-training half, scored on the validation half and freed, all counted by
// the accountant under owner "child". Not here: the services (SearchServices.swift), their C
// thunks (EspalierHost) and any strategy logic (Plugins/random, Plugins/parsec).

import CEspalierSDK
import EspalierCore
import EspalierHost
import Foundation

/// The batches of the step being taken: images (B, C, H, W) and labels (B) each.
public struct StepBatches {
    public var train: Batch
    /// The validation batch of a bilevel step (nil: the training batch stands in for it).
    public var valid: Batch?
    public init(train: Batch, valid: Batch?) { self.train = train; self.valid = valid }
}

extension SearchRun {
    /// Mean cross-entropy of the supernet as its op states are now (masked and removed ops do not
    /// run) on the step's training (`validation` false) or validation batch, and the batch size.
    /// `backward`: also accumulates ∂L/∂w into the weight gradients; otherwise forward only with
    /// no tape, so the memory is one forward pass of the active ops. Dry run: loss 0.
    public func batchLoss(validation: Bool, backward: Bool) throws -> (loss: Double, samples: Int) {
        guard let b = services.stepBatches else {
            throw SearchServiceError(status: ES_ERROR_UNSUPPORTED,
                                     message: "batch_loss: no step is being taken, so there is no step batch; call it from plan_step or after_step")
        }
        let batch = validation ? (b.valid ?? b.train) : b.train
        train(weights: backward, arch: false)
        let loss: Double
        if backward {
            loss = try lossAndGradients(batch.images, batch.labels, globalSize: batch.globalSize).0
        } else {
            loss = try graph.noGrad { try lossAndGradients(batch.images, batch.labels, globalSize: batch.globalSize, backward: false).0 }
        }
        return (loss, batch.globalSize)
    }

    /// Trains the architecture in `json` (genotype JSON, as `derive` writes it) from scratch for
    /// `steps` steps; its accuracy on the validation half (the first `evalImages` of it).
    public func trainChild(json: String, steps: Int) throws -> Double {
        let genotype: Genotype
        do { genotype = try Genotype.decode(Data(json.utf8), file: "train_child's architecture") } catch {
            throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: "train_child: \(error)")
        }
        return try trainChild(genotype, steps: steps)
    }

    /// Trains `genotype` as a DiscreteNetwork of the run's channels and cells from scratch: `steps`
    /// SGD steps (the run's learning rate annealed by cosine over the steps to its minimum,
    /// momentum, weight decay, gradient clip and batch size) on the weight-training half, then
    /// scored in evaluation mode on the validation half; the network is freed before returning.
    /// Weights and batch order come from the run's seed and the genotype, so the same child gives
    /// the same accuracy. Memory is counted under owner "child". Dry run: one step, accuracy 0.
    public func trainChild(_ genotype: Genotype, steps: Int) throws -> Double {
        guard steps >= 1 else {
            throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: "train_child: steps \(steps) must be at least 1")
        }
        let space = supernet.space
        for cell in Genotype.CellType.allCases {
            for e in genotype.edges(cell) {
                let id = genotype.opIDs?[e.op] ?? "espalier.op.\(e.op)/1"
                do { _ = try registry.require(id, kind: .op) } catch {
                    throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT,
                                             message: "train_child: the \(cell.rawValue) cell's op '\(e.op)' needs component \(id): \(error)")
                }
            }
        }
        let data = trainLoader.view
        var d = NetworkDescription(genotype: genotype)
        d.inputChannels = space.inputChannels
        d.classes = space.classes
        d.channels = space.channels
        d.cells = space.cells
        d.stemMultiplier = space.stemMultiplier
        d.imageSize = data.dataset.height
        let seed = config.seed ^ fnv1a(genotype.jsonText())

        // Building a network points the context's parameter factory at it; the supernet's stays.
        let supernetFactory = context.factory
        defer { context.factory = supernetFactory }
        return try accountant.withOwner("child") {
            let net = try DiscreteNetwork(d, registry: registry, context: context, seed: seed)
            var tc = TrainConfig()
            tc.batchSize = config.batchSize
            tc.learningRate = config.learningRate
            tc.minLearningRate = config.minLearningRate
            tc.momentum = config.momentum
            tc.weightDecay = config.weightDecay
            tc.gradClip = config.gradClip
            tc.seed = seed
            let trainer = try ClassifierTrainer(model: net, accountant: accountant, config: tc)
            let loader = try DataLoader(data, batchSize: config.batchSize, shuffle: true, dropLast: true, seed: seed)
            let schedule = CosineSchedule(maxLR: config.learningRate, minLR: config.minLearningRate, totalEpochs: steps)
            for s in 0..<steps {
                trainer.optimizer.learningRate = schedule.learningRate(epoch: s)
                let batch = try accountant.withOwner("batch") { try loader.nextCycling(accountant: accountant) }
                try trainer.trainStep(images: batch.images, labels: batch.labels)
                if accountant.isDryRun { return 0 }
            }
            return try trainer.evaluate(self.data.validEvalView).accuracy
        }
    }
}

/// FNV-1a of a string's UTF-8 bytes: a seed that is the same for the same child in every process.
func fnv1a(_ s: String) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for byte in s.utf8 { h = (h ^ UInt64(byte)) &* 0x100_0000_01b3 }
    return h
}
