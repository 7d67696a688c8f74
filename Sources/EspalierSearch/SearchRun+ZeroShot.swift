// What the `forward_logits` search service does for zero-shot scoring (ETENAS, Zero-One-Shot):
// the logits of the supernet, as its op states are now, with weights re-initialised from a seed,
// forward only and with batch norm in training mode, on a fixed set of training images. A
// temporary Supernet is built from the run's space, gate and op settings with seed `init_seed`
// (so the same seed gives the same weights, and an op's weights do not depend on which other ops
// are masked), the run's op states are copied onto it (masked and removed ops do not run), the
// first batches·batch images of the weight-training half (in their stored order, the same images
// every call) go through it, and it is freed before returning. Everything it allocates is counted
// under owner "zeroshot". Not here: the services (SearchServices.swift), their C thunk
// (EspalierHost) and any scoring or pruning logic (Plugins/zeroshot).

import CEspalierSDK
import EspalierCore
import EspalierHost
import Foundation

extension SearchRun {
    /// The images `forwardLogits` uses: the first `batches`·batch of the weight-training half in
    /// their stored order. In a dry run (a stand-in dataset of two batches) the images cycle.
    func zeroShotImages(batches: Int) throws -> DataLoader {
        let need = batches * config.batchSize
        let view = trainLoader.view
        guard accountant.isDryRun || view.count >= need else {
            throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT,
                                     message: "forward_logits: \(batches) batches of \(config.batchSize) need \(need) images, but the weight-training half holds \(view.count); ask for at most \(view.count / max(config.batchSize, 1)) batches")
        }
        return try DataLoader(view.prefix(need), batchSize: config.batchSize, shuffle: false, dropLast: false, seed: 0)
    }

    /// The network `forwardLogits` runs: a new Supernet of this run's space, gate and op settings
    /// with weights (and α) from `initSeed`, in this run's op states (masked and removed ops copied;
    /// a removed op's parameters are freed). Allocated under the caller's owner; the caller must
    /// keep the run's parameter factory (building one points the context's factory at it).
    public func zeroShotSupernet(initSeed: UInt64) throws -> Supernet {
        let net = try Supernet(space: supernet.space, registry: registry, context: context, gateID: config.gate,
                               gateSettings: config.gateSettings, opSettings: config.opSettings, seed: initSeed)
        // Per slot: a cell type's cells, or (hyper-connected) each cell; and each cell's inter-cell inputs.
        for slot in 0..<supernet.slotCount {
            for e in 0..<supernet.space.edgesPerCell {
                for o in 0..<supernet.space.ops.count {
                    let s = supernet.opState(slot: slot, edge: e, op: o)
                    if s != .active { try net.setOpState(slot: slot, edge: e, op: o, s) }
                }
            }
        }
        for (cell, states) in inputStatesByCell().enumerated() {
            for (j, raw) in states.enumerated() where raw != OpState.active.rawValue {
                try net.setInputState(cell: cell, input: j, OpState(rawValue: raw) ?? .active)
            }
        }
        return net
    }

    /// Forward only on `batches` training batches through a fresh supernet seeded by `initSeed`
    /// with this run's op states; writes the logits, (batches·batch, classes) row-major, to `out`
    /// (nothing is written in a dry run, where `out` may be NULL). Memory under owner "zeroshot".
    public func forwardLogits(batches: Int, initSeed: UInt64, into out: UnsafeMutablePointer<Float>?) throws {
        guard batches >= 1 else {
            throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: "forward_logits: batches \(batches) must be at least 1")
        }
        let classes = supernet.space.classes, batch = config.batchSize
        guard accountant.isDryRun || out != nil else {
            throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: "forward_logits: the logits view has no data")
        }
        let loader = try zeroShotImages(batches: batches)
        // Building a network points the context's parameter factory at it; the run's stays.
        let savedFactory = context.factory
        defer { context.factory = savedFactory }
        try accountant.withOwner("zeroshot") {
            let net = try zeroShotSupernet(initSeed: initSeed)
            let wasTraining = graph.training
            graph.training = true   // batch norm normalises with the batch's own statistics
            defer { graph.training = wasTraining }
            var s = state
            s.dryRun = accountant.isDryRun
            for b in 0..<batches {
                let images = try accountant.withOwner("batch") { try loader.nextCycling(accountant: accountant) }
                try graph.noGrad {
                    let logits = try net.logits(graph, graph.constant(images.images), state: s)
                    guard logits.shape == [images.size, classes] else {
                        throw SearchServiceError(status: ES_ERROR_INTERNAL, message: "forward_logits: the supernet gave logits \(logits.shape), expected [\(images.size), \(classes)]")
                    }
                    if graph.computing, let out {
                        (out + b * batch * classes).update(from: logits.value.ptr, count: images.size * classes)
                    }
                }
            }
        }
    }

    /// The logits of `forwardLogits` as an array (tests, benchmarks): (batches·batch)·classes floats.
    public func zeroShotLogits(batches: Int, initSeed: UInt64) throws -> [Float] {
        var out = [Float](repeating: 0, count: batches * config.batchSize * supernet.space.classes)
        try out.withUnsafeMutableBufferPointer { try forwardLogits(batches: batches, initSeed: initSeed, into: $0.baseAddress) }
        return out
    }

    /// The `forward_logits` service: checks the caller's view, (batches·batch, classes), and fills it.
    public func forwardLogits(batches: Int32, initSeed: UInt64, view: UnsafeMutablePointer<es_tensor_view>?) throws {
        guard let view else { throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: "forward_logits needs a logits view") }
        guard batches >= 1 else {
            throw SearchServiceError(status: ES_ERROR_INVALID_ARGUMENT, message: "forward_logits: batches \(batches) must be at least 1")
        }
        // What a caller needs to shape its view is also answered by get_value ("batch", "space.classes").
        let expected = [Int(batches) * config.batchSize, supernet.space.classes]
        let v = view.pointee
        let rank = Int(max(0, min(v.rank, Int32(ESPALIER_MAX_RANK))))
        let shape: [Int] = withUnsafeBytes(of: v.shape) { raw in (0..<rank).map { Int(raw.load(fromByteOffset: $0 * 8, as: Int64.self)) } }
        guard v.rank == 2, shape == expected else {
            throw SearchServiceError(status: ES_ERROR_SHAPE,
                                     message: "forward_logits: the logits view has shape \(shape), expected \(expected) (batches·batch = \(batches)·\(config.batchSize), classes)")
        }
        try forwardLogits(batches: Int(batches), initSeed: initSeed, into: accountant.isDryRun ? nil : v.data)
    }
}
