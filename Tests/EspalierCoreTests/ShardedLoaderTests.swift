// Data-parallel loading (DataLoader.shard = (part, parts)): every part draws the global order and
// the augmentation of the whole batch and materialises only its samples Shards.range(part, parts,
// batch), so the parts' batches laid end to end are the unsharded loader's batch, value for value;
// Batch.globalSize is the whole batch. And Shards.range itself: a partition into near-equal slices.

import EspalierCore
import EspalierTestSupport
import XCTest

final class ShardedLoaderTests: XCTestCase {
    private static let augmentation = Augmentation(cropPadding: 2, horizontalFlip: true, cutoutLength: 4)

    private func makeLoader(_ ds: Dataset, part: Int = 0, parts: Int = 1, dropLast: Bool = false,
                            augmentation: Augmentation = ShardedLoaderTests.augmentation) throws -> DataLoader {
        let loader = try DataLoader(ds, batchSize: 10, shuffle: true, dropLast: dropLast, augmentation: augmentation, seed: 11)
        loader.shard = (part, parts)
        return loader
    }

    /// For B = 10 over 34 samples (batches of 10, 10, 10 and a last one of 4), two epochs: the
    /// parts' batches concatenated are the unsharded batch (images, labels, indices), each part
    /// holds its Shards.range of the batch, globalSize is the whole batch for every part, and
    /// every part's loader state (position, augmentation RNG) follows the unsharded loader's.
    func testShardsConcatenateToTheUnshardedBatch() throws {
        let acc = MemoryAccountant()
        let ds = try Dataset.synthetic(count: 34, channels: 3, height: 8, width: 8, classes: 4, seed: 2, accountant: acc)
        let per = 3 * 8 * 8
        for parts in [3, 2] {
            let reference = try makeLoader(ds)
            let shards = try (0..<parts).map { try makeLoader(ds, part: $0, parts: parts) }
            var sizes = [Int]()
            for epoch in 0..<2 {
                for step in 0... {
                    let what = "parts=\(parts) epoch \(epoch) batch \(step)"
                    let whole = try reference.next(accountant: acc)
                    let pieces = try shards.map { try $0.next(accountant: acc) }
                    guard let whole else {
                        XCTAssertTrue(pieces.allSatisfy { $0 == nil }, "every part ends the epoch with the unsharded loader: \(what)")
                        break
                    }
                    if epoch == 0 { sizes.append(whole.size) }
                    XCTAssertEqual(whole.globalSize, whole.size, what)
                    var images = [Float](), labels = [Int32](), indices = [Int]()
                    for (part, piece) in pieces.enumerated() {
                        let piece = try XCTUnwrap(piece, "part \(part) must have a batch: \(what)")
                        let mine = Shards.range(part: part, of: parts, count: whole.size)
                        XCTAssertEqual(piece.size, mine.count, "part \(part) size \(what)")
                        XCTAssertEqual(piece.images.shape, [mine.count, 3, 8, 8], "part \(part) shape \(what)")
                        XCTAssertEqual(piece.globalSize, whole.size, "part \(part) globalSize \(what)")
                        XCTAssertEqual(piece.indices, Array(whole.indices[mine]), "part \(part) indices \(what)")
                        XCTAssertEqual(piece.images.array, Array(whole.images.array[(mine.lowerBound * per) ..< (mine.upperBound * per)]),
                                       "part \(part) images \(what)")
                        images += piece.images.array; labels += piece.labels; indices += piece.indices
                    }
                    XCTAssertEqual(images, whole.images.array, "images \(what)")
                    XCTAssertEqual(labels, whole.labels, "labels \(what)")
                    XCTAssertEqual(indices, whole.indices, "indices \(what)")
                    for (part, shard) in shards.enumerated() {
                        XCTAssertEqual(shard.state, reference.state, "part \(part) state after \(what)")
                    }
                }
            }
            XCTAssertEqual(sizes, [10, 10, 10, 4], "batches of an epoch, parts=\(parts)")
        }
    }

    /// A last batch smaller than the number of parts (2 samples in 3 parts): the first part gets
    /// an empty batch, the others one sample each, and together they are still the whole batch.
    func testLastBatchSmallerThanParts() throws {
        let acc = MemoryAccountant()
        let ds = try Dataset.synthetic(count: 32, channels: 3, height: 8, width: 8, classes: 4, seed: 9, accountant: acc)
        let reference = try makeLoader(ds)
        let shards = try (0..<3).map { try makeLoader(ds, part: $0, parts: 3) }
        var last: Batch?
        while let b = try reference.next(accountant: acc) { last = b }
        var pieces = [Batch]()
        for shard in shards {
            var p: Batch?
            while let b = try shard.next(accountant: acc) { p = b }
            pieces.append(try XCTUnwrap(p))
        }
        let whole = try XCTUnwrap(last)
        XCTAssertEqual(whole.size, 2)
        XCTAssertEqual(pieces.map(\.size), [0, 1, 1])
        XCTAssertEqual(pieces.map(\.globalSize), [2, 2, 2])
        XCTAssertEqual(pieces.flatMap(\.indices), whole.indices)
        XCTAssertEqual(pieces.flatMap(\.labels), whole.labels)
        XCTAssertEqual(pieces.flatMap { $0.images.array }, whole.images.array)
    }

    /// globalSize is 10 for every part of every full batch, whatever the part's own size (3, 3, 4).
    func testGlobalSizeIsTheWholeBatchForEveryPart() throws {
        let acc = MemoryAccountant()
        let ds = try Dataset.synthetic(count: 30, channels: 1, height: 6, width: 6, classes: 3, seed: 5, accountant: acc)
        for parts in [2, 3] {
            for part in 0..<parts {
                let loader = try makeLoader(ds, part: part, parts: parts, dropLast: true)
                var count = 0
                while let b = try loader.next(accountant: acc) {
                    XCTAssertEqual(b.globalSize, 10, "part \(part) of \(parts)")
                    XCTAssertEqual(b.size, Shards.range(part: part, of: parts, count: 10).count, "part \(part) of \(parts)")
                    count += 1
                }
                XCTAssertEqual(count, 3)
            }
        }
        // Unsharded, globalSize is the batch's own size.
        let b = try XCTUnwrap(try makeLoader(ds).next(accountant: acc))
        XCTAssertEqual(b.globalSize, 10)
        XCTAssertEqual(b.size, 10)
    }

    /// The augmentation really is on in these tests (so the comparisons cover crop, flip and
    /// cutout): the augmented batch differs from the plain one in the same order, and augmentation
    /// alone never changes the order.
    func testAugmentationIsActive() throws {
        let acc = MemoryAccountant()
        let ds = try Dataset.synthetic(count: 34, channels: 3, height: 8, width: 8, classes: 4, seed: 2, accountant: acc)
        let augmented = try XCTUnwrap(try makeLoader(ds).next(accountant: acc))
        let plain = try XCTUnwrap(try makeLoader(ds, augmentation: .none).next(accountant: acc))
        XCTAssertEqual(augmented.indices, plain.indices)
        XCTAssertNotEqual(augmented.images.array, plain.images.array)
        // Cutout zeroes whole squares: the augmented batch holds many exact zeros.
        XCTAssertGreaterThan(augmented.images.array.filter { $0 == 0 }.count, 10 * 3 * 4)
    }

    /// Shards.range partitions 0..<count: in order, contiguous, each index once, sizes differing by
    /// at most 1, the last part the largest.
    func testShardsRange_PartitionsEvenlyWithTheLastPartLargest() {
        XCTAssertEqual((0..<3).map { Shards.range(part: $0, of: 3, count: 10) }, [0..<3, 3..<6, 6..<10])
        XCTAssertEqual((0..<2).map { Shards.range(part: $0, of: 2, count: 10) }, [0..<5, 5..<10])
        XCTAssertEqual((0..<3).map { Shards.range(part: $0, of: 3, count: 7) }, [0..<2, 2..<4, 4..<7])
        XCTAssertEqual(Shards.range(part: 0, of: 1, count: 9), 0..<9)
        for parts in 1...8 {
            for count in 0...40 {
                let ranges = (0..<parts).map { Shards.range(part: $0, of: parts, count: count) }
                let what = "count \(count) in \(parts) parts"
                XCTAssertEqual(ranges.first?.lowerBound, 0, what)
                XCTAssertEqual(ranges.last?.upperBound, count, what)
                for p in 1..<parts { XCTAssertEqual(ranges[p].lowerBound, ranges[p - 1].upperBound, "contiguous \(what)") }
                XCTAssertEqual(ranges.flatMap { Array($0) }, Array(0..<count), "each index once \(what)")
                let sizes = ranges.map(\.count)
                XCTAssertLessThanOrEqual(sizes.max()! - sizes.min()!, 1, "sizes \(sizes) \(what)")
                XCTAssertEqual(sizes.last, sizes.max(), "last part largest: \(sizes) \(what)")
            }
        }
    }
}
