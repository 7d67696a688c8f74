// Batches from a dataset: `DataView` (a dataset and a list of its indices, for train/validation
// splits), and `DataLoader`, which shuffles per epoch from a seed, augments (random crop with zero
// padding, horizontal flip, cutout) from its own RNG, normalises, and hands out float32 batches.
// Its position is a small `Codable` state, so a checkpoint resumes the exact same batch sequence.
// Not here: reading files (Dataset.swift, IDX.swift), background prefetching, other augmentations.

import Foundation

/// Some samples of a dataset, by index. Cheap to copy: the dataset is shared.
public struct DataView {
    public let dataset: Dataset
    /// indices: (count), each in 0..<dataset.count
    public let indices: [Int]

    public init(dataset: Dataset, indices: [Int]) throws {
        if let bad = indices.first(where: { $0 < 0 || $0 >= dataset.count }) {
            throw EspalierError.invalidArgument("view of \(dataset.name): index \(bad) is outside 0..<\(dataset.count)")
        }
        self.dataset = dataset
        self.indices = indices
    }

    fileprivate init(unchecked dataset: Dataset, _ indices: [Int]) {
        self.dataset = dataset
        self.indices = indices
    }

    public var count: Int { indices.count }
    public func label(_ i: Int) -> Int32 { dataset.labels[indices[i]] }

    /// The first `n` samples of the view.
    public func prefix(_ n: Int) -> DataView { DataView(unchecked: dataset, Array(indices.prefix(max(0, n)))) }

    /// Splits the view at random (from `seed`) into two disjoint views that together cover it:
    /// `train` gets round(fraction·count) samples, `validation` the rest. Each part keeps dataset order.
    public func split(fraction: Double, seed: UInt64) throws -> (train: DataView, validation: DataView) {
        guard fraction >= 0, fraction <= 1 else {
            throw EspalierError.invalidArgument("split fraction \(fraction) must be between 0 and 1 (the share kept for training)")
        }
        var rng = RNG(seed: seed)
        let perm = rng.permutation(count)
        let nTrain = Int((Double(count) * fraction).rounded())
        let train = perm[..<nTrain].sorted().map { indices[$0] }
        let validation = perm[nTrain...].sorted().map { indices[$0] }
        return (DataView(unchecked: dataset, train), DataView(unchecked: dataset, validation))
    }
}

extension Dataset {
    /// All samples, in order.
    public var all: DataView { DataView(unchecked: self, Array(0..<count)) }

    /// A random disjoint train/validation split of the whole dataset; see `DataView.split`.
    public func split(fraction: Double, seed: UInt64) throws -> (train: DataView, validation: DataView) {
        try all.split(fraction: fraction, seed: seed)
    }
}

/// Training-time augmentation, applied per sample in this order: random crop of the image padded
/// with `cropPadding` zero pixels on each side (back to H×W), horizontal flip with p = 0.5,
/// normalisation, then cutout: a `cutoutLength` square, centre uniform over the image, clipped at
/// the edges, set to 0 in every channel (DeVries & Taylor, 2017). 0 / false switches a step off.
public struct Augmentation: Codable, Equatable, Sendable {
    public var cropPadding: Int
    public var horizontalFlip: Bool
    public var cutoutLength: Int

    public init(cropPadding: Int = 0, horizontalFlip: Bool = false, cutoutLength: Int = 0) {
        self.cropPadding = cropPadding
        self.horizontalFlip = horizontalFlip
        self.cutoutLength = cutoutLength
    }

    public static let none = Augmentation()
    /// The usual CIFAR recipe: pad 4 and crop, flip, and optionally cutout 16.
    public static func standard(cutout: Int = 0) -> Augmentation {
        Augmentation(cropPadding: 4, horizontalFlip: true, cutoutLength: cutout)
    }
    public var isNone: Bool { cropPadding == 0 && !horizontalFlip && cutoutLength == 0 }
}

/// One batch. `images` is counted in the accountant (category `.data`) until the batch is dropped.
public struct Batch {
    /// images: (B, C, H, W) float32, normalised; virtual (no values) in a dry run
    public let images: Tensor
    /// labels: (B)
    public let labels: [Int32]
    /// indices: (B), the dataset index of each sample
    public let indices: [Int]
    /// The batch all ranks hold together (its own size in one process): this rank's share of the
    /// gradient is size / globalSize.
    public var globalSize: Int
    public var size: Int { labels.count }

    public init(images: Tensor, labels: [Int32], indices: [Int], globalSize: Int? = nil) {
        self.images = images
        self.labels = labels
        self.indices = indices
        self.globalSize = globalSize ?? labels.count
    }
}

public final class DataLoader {
    /// Where the loader is: enough to resume the exact same batches (and augmentations).
    public struct State: Codable, Equatable, Sendable {
        /// Epochs completed (0 during the first one).
        public var epoch: Int
        /// Samples already handed out in this epoch.
        public var position: Int
        /// The augmentation RNG (the epoch's order is rebuilt from `seed` and `epoch`).
        public var rng: RNG
        /// Checked on restore: a state only fits a loader with the same seed over the same number of samples.
        public var seed: UInt64
        public var sampleCount: Int
    }

    public let view: DataView
    public let batchSize: Int
    public let shuffle: Bool
    public let dropLast: Bool
    public let augmentation: Augmentation
    public let seed: UInt64

    public private(set) var epoch = 0
    /// Samples already handed out in this epoch.
    public private(set) var position = 0
    private var rng: RNG
    /// order: (view.count) the dataset indices of this epoch, in the order they are handed out
    private var order: [Int] = []
    /// luts: (C, 256) normalised value of each byte per channel
    private let luts: [Float]
    /// This rank's part of every batch (data-parallel search): `next` draws the order and the
    /// augmentation of the whole batch, exactly as one process does, and materialises only the
    /// samples [part·B/parts, (part+1)·B/parts). (0, 1): the whole batch.
    public var shard: (part: Int, parts: Int) = (0, 1) {
        didSet { precondition(shard.parts >= 1 && shard.part >= 0 && shard.part < shard.parts, "shard \(shard)") }
    }

    /// - Parameters:
    ///   - shuffle: a new random order every epoch (from `seed` and the epoch number).
    ///   - dropLast: skip the last batch of an epoch when it would be smaller than `batchSize`.
    public init(_ view: DataView, batchSize: Int, shuffle: Bool = true, dropLast: Bool = false,
                augmentation: Augmentation = .none, seed: UInt64 = 0) throws {
        guard batchSize > 0 else { throw EspalierError.invalidArgument("batch size must be positive, got \(batchSize)") }
        guard augmentation.cropPadding >= 0, augmentation.cutoutLength >= 0 else {
            throw EspalierError.invalidArgument("crop padding and cutout length must be ≥ 0, got \(augmentation.cropPadding) "
                                                + "and \(augmentation.cutoutLength)")
        }
        self.view = view
        self.batchSize = batchSize
        self.shuffle = shuffle
        self.dropLast = dropLast
        self.augmentation = augmentation
        self.seed = seed
        self.rng = RNG(seed: seed ^ 0xA06E_3A71_0B5C_D2F1)
        let ds = view.dataset
        var luts = [Float](repeating: 0, count: ds.channels * 256)
        for c in 0..<ds.channels {
            for v in 0..<256 { luts[c * 256 + v] = (Float(v) / 255 - ds.mean[c]) / ds.std[c] }
        }
        self.luts = luts
        order = makeOrder(epoch: 0)
    }

    public convenience init(_ dataset: Dataset, batchSize: Int, shuffle: Bool = true, dropLast: Bool = false,
                            augmentation: Augmentation = .none, seed: UInt64 = 0) throws {
        try self.init(dataset.all, batchSize: batchSize, shuffle: shuffle, dropLast: dropLast,
                      augmentation: augmentation, seed: seed)
    }

    public var sampleCount: Int { view.count }
    public var batchesPerEpoch: Int { dropLast ? view.count / batchSize : (view.count + batchSize - 1) / batchSize }

    public var state: State { State(epoch: epoch, position: position, rng: rng, seed: seed, sampleCount: view.count) }

    /// Puts the loader where `state` says; the following batches are those that followed when it was saved.
    public func restore(_ state: State) throws {
        guard state.seed == seed, state.sampleCount == view.count else {
            throw EspalierError.config("data loader state was saved for seed \(state.seed) over \(state.sampleCount) samples, "
                                       + "but this loader has seed \(seed) over \(view.count); resume with the same data and seed")
        }
        guard state.epoch >= 0, state.position >= 0, state.position <= view.count else {
            throw EspalierError.config("data loader state is corrupt: epoch \(state.epoch), position \(state.position) of \(view.count)")
        }
        epoch = state.epoch
        position = state.position
        rng = state.rng
        order = makeOrder(epoch: epoch)
    }

    private func makeOrder(epoch: Int) -> [Int] {
        guard shuffle else { return view.indices }
        var r = RNG(seed: seed &+ UInt64(epoch) &* 0x9E37_79B9_7F4A_7C15)
        return r.permutation(view.count).map { view.indices[$0] }
    }

    /// The next batch of this epoch, or nil when the epoch is over; the call that returns nil starts
    /// the next epoch (new order), so `while let b = try loader.next(...)` runs exactly one epoch.
    /// The images are allocated through `accountant` under its current owner; in a dry run only the
    /// (virtual) tensor is allocated, while order and RNG advance exactly as in a real run.
    public func next(accountant: MemoryAccountant) throws -> Batch? {
        let remaining = view.count - position
        let whole = min(batchSize, remaining)
        if whole <= 0 || (dropLast && whole < batchSize) {
            epoch += 1
            position = 0
            order = makeOrder(epoch: epoch)
            return nil
        }
        let ds = view.dataset
        let (C, H, W) = (ds.channels, ds.height, ds.width)
        let pickedAll = Array(order[position ..< position + whole])
        // Draw every random number first, in a fixed order per sample, so dry and real runs agree.
        let aug = augmentation
        var paramsAll = [(oy: Int, ox: Int, flip: Bool, cy: Int, cx: Int)]()
        paramsAll.reserveCapacity(whole)
        for _ in 0..<whole {
            var p = (oy: aug.cropPadding, ox: aug.cropPadding, flip: false, cy: 0, cx: 0)
            if aug.cropPadding > 0 {
                p.oy = rng.int(2 * aug.cropPadding + 1)
                p.ox = rng.int(2 * aug.cropPadding + 1)
            }
            if aug.horizontalFlip { p.flip = rng.next() >> 63 == 1 }
            if aug.cutoutLength > 0 {
                p.cy = rng.int(H)
                p.cx = rng.int(W)
            }
            paramsAll.append(p)
        }
        // This rank's samples of the batch (all of them in one process).
        let mine = Shards.range(part: shard.part, of: shard.parts, count: whole)
        let picked = Array(pickedAll[mine]), params = Array(paramsAll[mine]), b = mine.count
        let images = try Tensor(shape: [b, C, H, W], category: .data, accountant: accountant)  // (B, C, H, W)
        if !images.isVirtual && b > 0 {
            let out = images.ptr
            let pad = aug.cropPadding
            ds.images.withUnsafeBufferPointer { srcAll in
                luts.withUnsafeBufferPointer { lutAll in
                    for s in 0..<b {
                        let p = params[s]
                        let src = srcAll.baseAddress! + picked[s] * C * H * W  // (C, H, W)
                        for c in 0..<C {
                            let lut = lutAll.baseAddress! + c * 256
                            let plane = src + c * H * W
                            for y in 0..<H {
                                let dst = out + ((s * C + c) * H + y) * W
                                let sy = y + p.oy - pad
                                if sy < 0 || sy >= H { dst.update(repeating: lut[0], count: W); continue }
                                let row = plane + sy * W
                                for x in 0..<W {
                                    let sx = (p.flip ? W - 1 - x : x) + p.ox - pad
                                    dst[x] = (sx >= 0 && sx < W) ? lut[Int(row[sx])] : lut[0]
                                }
                            }
                        }
                        if aug.cutoutLength > 0 {
                            let half = aug.cutoutLength / 2
                            let y0 = max(0, p.cy - half), y1 = min(H, p.cy + half)
                            let x0 = max(0, p.cx - half), x1 = min(W, p.cx + half)
                            if y0 < y1 && x0 < x1 {
                                for c in 0..<C {
                                    for y in y0..<y1 { (out + ((s * C + c) * H + y) * W + x0).update(repeating: 0, count: x1 - x0) }
                                }
                            }
                        }
                    }
                }
            }
        }
        position += whole
        return Batch(images: images, labels: picked.map { ds.labels[$0] }, indices: picked, globalSize: whole)
    }

    /// Like `next`, but rolls straight into the next epoch instead of returning nil (for a
    /// validation stream consumed alongside training). Throws if an epoch holds no batch.
    public func nextCycling(accountant: MemoryAccountant) throws -> Batch {
        if let b = try next(accountant: accountant) { return b }
        guard let b = try next(accountant: accountant) else {
            throw EspalierError.invalidArgument("data loader over \(view.count) samples yields no batch of \(batchSize)"
                                                + (dropLast ? " with drop-last" : "") + "; use a smaller batch or more data")
        }
        return b
    }
}
