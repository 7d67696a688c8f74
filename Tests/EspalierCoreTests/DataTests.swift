// The data module: IDX and CIFAR parsing against small fixture files written to a temporary
// folder (good, truncated, padded, mislabelled), the synthetic set, deterministic shuffling and
// splitting, batch contents (normalisation, crop, flip, cutout), and loader resume.
// The real Fashion-MNIST files are loaded only if installed (/usr/share/datasets/fashion-mnist).

import CZlib
import EspalierCore
import EspalierTestSupport
import Foundation
import XCTest

final class DataTests: TemporaryDirectoryTestCase {
    // MARK: Fixtures


    func bigEndian(_ v: Int) -> [UInt8] { [UInt8(v >> 24 & 0xFF), UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)] }

    func idxImages(count: Int, rows: Int, cols: Int, pixels: [UInt8]? = nil) -> [UInt8] {
        bigEndian(0x803) + bigEndian(count) + bigEndian(rows) + bigEndian(cols)
            + (pixels ?? (0..<count * rows * cols).map { UInt8($0 % 251) })
    }

    func idxLabels(_ labels: [UInt8]) -> [UInt8] { bigEndian(0x801) + bigEndian(labels.count) + labels }

    /// Writes `bytes` to `name` in the temporary folder, gzip-compressed if the name ends in .gz and not `raw`.
    func write(_ bytes: [UInt8], _ name: String, raw: Bool = false) throws -> String {
        let p = path(name)
        if name.hasSuffix(".gz"), !raw {
            guard let f = gzopen(p, "wb") else { throw EspalierError.data(file: p, problem: "cannot create") }
            let n = bytes.withUnsafeBytes { gzwrite(f, $0.baseAddress, UInt32(bytes.count)) }
            gzclose(f)
            XCTAssertEqual(Int(n), bytes.count)
        } else {
            try Data(bytes).write(to: URL(fileURLWithPath: p))
        }
        return p
    }

    /// Writes a Fashion-MNIST-shaped folder with `n` train and `n` test images.
    func writeFakeFMNIST(n: Int = 5, gz: Bool = true) throws {
        let ext = gz ? ".gz" : ""
        for stem in ["train", "t10k"] {
            _ = try write(idxImages(count: n, rows: 28, cols: 28), "\(stem)-images-idx3-ubyte\(ext)")
            _ = try write(idxLabels((0..<n).map { UInt8($0 % 10) }), "\(stem)-labels-idx1-ubyte\(ext)")
        }
    }

    // MARK: IDX

    func testIDX_ReadsGzipAndPlain() throws {
        let img = idxImages(count: 3, rows: 2, cols: 4)
        for name in ["a.gz", "a"] {
            let r = try IDX.readImages(path: try write(img, name))
            XCTAssertEqual([r.count, r.rows, r.cols], [3, 2, 4])
            XCTAssertEqual(r.pixels, Array(img[16...]))
        }
        XCTAssertEqual(try IDX.readLabels(path: try write(idxLabels([3, 1, 4]), "l.gz")), [3, 1, 4])
    }

    func testIDX_RejectsWrongMagic() throws {
        let labels = try write(idxLabels([1, 2]), "labels.gz")
        assertDataError(try IDX.readImages(path: labels), contains: [labels, "0x00000801", "swapped"])
        var bad = idxImages(count: 1, rows: 1, cols: 1)
        bad[2] = 0x0D  // float element type
        let p = try write(bad, "float.gz")
        assertDataError(try IDX.readImages(path: p), contains: [p, "magic number"])
    }

    func testIDX_RejectsTruncatedAndTrailingBytes() throws {
        let img = idxImages(count: 4, rows: 3, cols: 3)
        let short = try write(Array(img.dropLast(5)), "short.gz")
        assertDataError(try IDX.readImages(path: short), contains: [short, "truncated", "\(img.count) bytes", "\(img.count - 5)"])
        let long = try write(img + [1, 2, 3], "long.gz")
        assertDataError(try IDX.readImages(path: long), contains: [long, "3 trailing bytes"])
        let shortPlain = try write(Array(img.dropLast(1)), "short")
        assertDataError(try IDX.readImages(path: shortPlain), contains: [shortPlain, "truncated"])
        let tiny = try write([0, 0], "tiny")
        assertDataError(try IDX.readLabels(path: tiny), contains: [tiny, "too short"])
        // A gzip stream cut inside its compressed data.
        let full = try write(img, "full.gz")
        let compressed = try Data(contentsOf: URL(fileURLWithPath: full))
        for n in [1, 6, 20] {  // inside the trailer (CRC, length), and inside the deflate data
            let cut = try write(Array(compressed.prefix(compressed.count - n)), "cut\(n).gz", raw: true)
            assertDataError(try IDX.readImages(path: cut), contains: [cut])
        }
        var flipped = Array(compressed)
        flipped[flipped.count - 6] ^= 0xFF  // CRC mismatch
        let bad = try write(flipped, "crc.gz", raw: true)
        assertDataError(try IDX.readImages(path: bad), contains: [bad, "zlib"])
        let twice = try write(Array(compressed), "twice.gz")
        assertDataError(try IDX.readImages(path: twice), contains: [twice, "compressed twice"])
    }

    // MARK: Fashion-MNIST loader

    func testFashionMNIST_LoadsFakeFolder() throws {
        for gz in [true, false] {
            try? FileManager.default.removeItem(atPath: dir)
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try writeFakeFMNIST(n: 7, gz: gz)
            let acc = MemoryAccountant()
            let ds = try Dataset.fashionMNIST(folder: dir, split: .test, accountant: acc)
            XCTAssertEqual([ds.count, ds.channels, ds.height, ds.width, ds.numClasses], [7, 1, 28, 28, 10])
            XCTAssertEqual(ds.labels, [0, 1, 2, 3, 4, 5, 6])
            // Measured on the split's pixels (i % 251 over 7 images), not Fashion-MNIST's published 0.2860.
            let px = (0..<(7 * 784)).map { Double(UInt8($0 % 251)) / 255 }
            let m = px.reduce(0, +) / Double(px.count)
            XCTAssertEqual(Double(ds.mean[0]), m, accuracy: 1e-6)
            XCTAssertEqual(Double(ds.std[0]), (px.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(px.count)).squareRoot(), accuracy: 1e-6)
            XCTAssertEqual(acc.current[.data], 7 * 784 + 7 * 4)
            XCTAssertEqual(Array(ds.image(1).prefix(2)), [UInt8(784 % 251), UInt8(785 % 251)])
        }
    }

    func testFashionMNIST_MissingFilesMentionDebianPackage() throws {
        let acc = MemoryAccountant()
        assertDataError(try Dataset.fashionMNIST(folder: path("nope"), split: .train, accountant: acc),
                        contains: ["nope", "dataset-fashion-mnist", "apt-get install", "--data-dir"])
        _ = try write(idxImages(count: 1, rows: 28, cols: 28), "train-images-idx3-ubyte.gz")
        assertDataError(try Dataset.fashionMNIST(folder: dir, split: .train, accountant: acc),
                        contains: ["train-labels-idx1-ubyte", "dataset-fashion-mnist"])
        XCTAssertEqual(acc.currentTotal, 0)
    }

    func testFashionMNIST_RejectsCountMismatchAndBadLabels() throws {
        _ = try write(idxImages(count: 3, rows: 28, cols: 28), "train-images-idx3-ubyte.gz")
        let labels = try write(idxLabels([0, 1]), "train-labels-idx1-ubyte.gz")
        let acc = MemoryAccountant()
        assertDataError(try Dataset.fashionMNIST(folder: dir, split: .train, accountant: acc), contains: [labels, "2 labels", "3 images"])
        _ = try write(idxLabels([0, 10, 1]), "train-labels-idx1-ubyte.gz")
        assertDataError(try Dataset.fashionMNIST(folder: dir, split: .train, accountant: acc), contains: ["label 10", "index 1"])
    }

    func testFashionMNIST_RealFilesIfInstalled() throws {
        let folder = Dataset.fashionMNISTFolder
        guard FileManager.default.fileExists(atPath: folder) else {
            throw Prerequisite.missing("\(folder) absent (apt-get install dataset-fashion-mnist)")
        }
        let acc = MemoryAccountant()
        for (split, n) in [(Dataset.Split.train, 60000), (.test, 10000)] {
            let ds = try Dataset.fashionMNIST(split: split, accountant: acc)
            XCTAssertEqual(ds.count, n)
            XCTAssertEqual(ds.images.count, n * 784)
            XCTAssertTrue(ds.labels.allSatisfy { $0 >= 0 && $0 < 10 })
            XCTAssertEqual(ds.classCounts(), Array(repeating: n / 10, count: 10))  // FMNIST is balanced
            XCTAssertEqual(acc.current[.data], ds.byteCount)
            // The measured training statistics are the ones Fashion-MNIST's users quote (0.2860, 0.3530).
            if split == .train {
                XCTAssertEqual(ds.mean[0], 0.2860, accuracy: 5e-5)
                XCTAssertEqual(ds.std[0], 0.3530, accuracy: 5e-5)
            }
        }
    }

    // MARK: CIFAR-10

    func cifarFile(records: Int, label: (Int) -> UInt8 = { UInt8($0 % 10) }) -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(records * 3073)
        for r in 0..<records {
            out.append(label(r))
            out += [UInt8](repeating: UInt8(r % 256), count: 3072)
        }
        return out
    }

    func testCIFAR10_ReadsBinaryBatches() throws {
        _ = try write(cifarFile(records: 10000), "test_batch.bin")
        let acc = MemoryAccountant()
        let ds = try Dataset.cifar10(folder: dir, split: .test, accountant: acc)
        XCTAssertEqual([ds.count, ds.channels, ds.height, ds.width], [10000, 3, 32, 32])
        XCTAssertEqual(ds.labels[13], 3)
        XCTAssertTrue(ds.image(300).allSatisfy { $0 == UInt8(300 % 256) })
        XCTAssertEqual(acc.current[.data], 10000 * (3072 + 4))
    }

    func testCIFAR10_RejectsWrongSizesAndLabels() throws {
        let acc = MemoryAccountant()
        assertDataError(try Dataset.cifar10(folder: dir, split: .test, accountant: acc), contains: ["test_batch.bin", "cifar-10-binary"])
        var p = try write(Array(cifarFile(records: 10000).dropLast(100)), "test_batch.bin")
        assertDataError(try Dataset.cifar10(folder: dir, split: .test, accountant: acc), contains: [p, "not a multiple of 3073"])
        // Any whole number of records is a file (a subset in the same layout; issue 17).
        _ = try write(cifarFile(records: 9999), "test_batch.bin")
        XCTAssertEqual(try Dataset.cifar10(folder: dir, split: .test, accountant: MemoryAccountant()).count, 9999)
        _ = try write(cifarFile(records: 10001), "test_batch.bin")
        XCTAssertEqual(try Dataset.cifar10(folder: dir, split: .test, accountant: MemoryAccountant()).count, 10001)
        p = try write(cifarFile(records: 10000) { $0 == 5 ? 17 : 0 }, "test_batch.bin")
        assertDataError(try Dataset.cifar10(folder: dir, split: .test, accountant: acc), contains: [p, "record 5", "label 17"])
        XCTAssertEqual(acc.currentTotal, 0)
    }

    // MARK: Synthetic, subsets

    func testSynthetic_IsDeterministicAndBalanced() throws {
        let acc = MemoryAccountant()
        let a = try Dataset.synthetic(count: 60, channels: 3, height: 6, width: 5, classes: 4, seed: 3, accountant: acc)
        let b = try Dataset.synthetic(count: 60, channels: 3, height: 6, width: 5, classes: 4, seed: 3, accountant: acc)
        let c = try Dataset.synthetic(count: 60, channels: 3, height: 6, width: 5, classes: 4, seed: 4, accountant: acc)
        let t = try Dataset.synthetic(count: 60, channels: 3, height: 6, width: 5, classes: 4, seed: 3, split: .test, accountant: acc)
        XCTAssertEqual(a.images, b.images)
        XCTAssertNotEqual(a.images, c.images)
        XCTAssertNotEqual(a.images, t.images)
        XCTAssertEqual(a.classCounts(), [15, 15, 15, 15])
        XCTAssertEqual(a.mean.count, 3)
        XCTAssertTrue(a.std.allSatisfy { $0 > 0.05 })
        XCTAssertEqual(acc.current[.data], 4 * (60 * 90 + 60 * 4))
    }

    /// A nearest-class-mean classifier on (per-channel mean, stripe orientation energy) features
    /// is far above chance on held-out samples: the task is learnable.
    func testSynthetic_IsLearnable() throws {
        let acc = MemoryAccountant()
        let train = try Dataset.synthetic(count: 400, channels: 1, height: 8, width: 8, classes: 4, seed: 1, accountant: acc)
        let test = try Dataset.synthetic(count: 200, channels: 1, height: 8, width: 8, classes: 4, seed: 1, split: .test, accountant: acc)
        // Shift-invariant features: mean, and mean |difference| along x, along y and both diagonals.
        func features(_ ds: Dataset, _ i: Int) -> [Float] {
            let img = Array(ds.image(i)).map { Float($0) / 255 }
            var f = [Float](repeating: 0, count: 5)
            for y in 0..<8 {
                for x in 0..<8 {
                    let v = img[y * 8 + x]
                    f[0] += v
                    if x < 7 { f[1] += abs(v - img[y * 8 + x + 1]) }
                    if y < 7 { f[2] += abs(v - img[(y + 1) * 8 + x]) }
                    if x < 7, y < 7 { f[3] += abs(v - img[(y + 1) * 8 + x + 1]) }
                    if x > 0, y < 7 { f[4] += abs(v - img[(y + 1) * 8 + x - 1]) }
                }
            }
            return f.map { $0 / 64 }
        }
        var centroids = [[Float]](repeating: [Float](repeating: 0, count: 5), count: 4)
        for i in 0..<train.count {
            let f = features(train, i)
            for j in 0..<5 { centroids[Int(train.labels[i])][j] += f[j] / 100 }
        }
        var correct = 0
        for i in 0..<test.count {
            let f = features(test, i)
            let d = centroids.map { c in zip(c, f).map { ($0 - $1) * ($0 - $1) }.reduce(0, +) }
            if d.firstIndex(of: d.min()!)! == Int(test.labels[i]) { correct += 1 }
        }
        XCTAssertGreaterThan(Double(correct) / Double(test.count), 0.8, "nearest-mean accuracy \(correct)/\(test.count)")
    }

    func testSubsetAndPrefix() throws {
        let acc = MemoryAccountant()
        let ds = try Dataset.synthetic(count: 10, channels: 2, height: 3, width: 3, classes: 5, seed: 0, accountant: acc)
        let s = try ds.subset(indices: [7, 2, 7])
        XCTAssertEqual(s.labels, [ds.labels[7], ds.labels[2], ds.labels[7]])
        XCTAssertEqual(Array(s.image(1)), Array(ds.image(2)))
        XCTAssertEqual(s.mean, ds.mean)
        let p = try ds.prefix(4)
        XCTAssertEqual(p.count, 4)
        XCTAssertEqual(Array(p.images), Array(ds.images[0..<4 * 18]))
        XCTAssertEqual(try ds.prefix(100).count, 10)
        XCTAssertThrowsError(try ds.subset(indices: [10]))
        XCTAssertEqual(acc.current[.data], (10 + 3 + 4) * (18 + 4), "the prefix(100) copy is gone")
    }

    // MARK: Shuffling and splitting

    func testSplit_IsDisjointCoveringAndDeterministic() throws {
        let acc = MemoryAccountant()
        let ds = try Dataset.synthetic(count: 101, height: 2, width: 2, seed: 0, accountant: acc)
        let (tr, va) = try ds.split(fraction: 0.5, seed: 9)
        XCTAssertEqual(tr.count, 51)  // round(50.5)
        XCTAssertEqual(va.count, 50)
        XCTAssertTrue(Set(tr.indices).isDisjoint(with: va.indices))
        XCTAssertEqual(Set(tr.indices).union(va.indices), Set(0..<101))
        XCTAssertEqual(try ds.split(fraction: 0.5, seed: 9).train.indices, tr.indices)
        XCTAssertNotEqual(try ds.split(fraction: 0.5, seed: 10).train.indices, tr.indices)
        // Splitting a view stays inside it.
        let (a, b) = try va.split(fraction: 0.3, seed: 1)
        XCTAssertEqual(Set(a.indices).union(b.indices), Set(va.indices))
        XCTAssertEqual(a.count, 15)
        XCTAssertThrowsError(try ds.split(fraction: 1.5, seed: 0))
    }

    func testShuffle_DeterministicFromSeed() throws {
        let acc = MemoryAccountant()
        let ds = try Dataset.synthetic(count: 50, height: 2, width: 2, seed: 0, accountant: acc)
        func epochOrder(seed: UInt64, epochs: Int = 1) throws -> [[Int]] {
            let l = try DataLoader(ds, batchSize: 8, seed: seed)
            var out: [[Int]] = []
            for _ in 0..<epochs {
                var order: [Int] = []
                while let b = try l.next(accountant: acc) { order += b.indices }
                out.append(order)
            }
            return out
        }
        let a = try epochOrder(seed: 1, epochs: 2)
        XCTAssertEqual(a, try epochOrder(seed: 1, epochs: 2))
        XCTAssertNotEqual(a[0], try epochOrder(seed: 2)[0])
        XCTAssertNotEqual(a[0], a[1], "each epoch has its own order")
        XCTAssertEqual(Set(a[0]), Set(0..<50))
        XCTAssertEqual(a[0].count, 50)
        XCTAssertNotEqual(a[0], Array(0..<50))
        let plain = try DataLoader(ds, batchSize: 8, shuffle: false)
        XCTAssertEqual(try plain.next(accountant: acc)?.indices, Array(0..<8))
    }

    // MARK: Batches

    /// A dataset of 2 images (C=2, H=3, W=4) whose pixel values are known.
    func knownDataset(_ acc: MemoryAccountant) throws -> Dataset {
        let pixels = (0..<2 * 24).map { UInt8($0 * 5) }
        return try Dataset(name: "known", images: pixels, labels: [1, 0], channels: 2, height: 3, width: 4, numClasses: 2,
                           mean: [0.5, 0.25], std: [0.5, 0.2], accountant: acc)
    }

    func normalised(_ ds: Dataset, _ i: Int) -> [Float] {
        ds.image(i).enumerated().map { k, v in (Float(v) / 255 - ds.mean[k / 12]) / ds.std[k / 12] }
    }

    func testBatch_ShapesLabelsAndNormalisation() throws {
        let acc = MemoryAccountant()
        let ds = try knownDataset(acc)
        let before = acc.current[.data]
        let l = try DataLoader(ds, batchSize: 2, shuffle: false)
        XCTAssertEqual(l.batchesPerEpoch, 1)
        var batch = try XCTUnwrap(l.next(accountant: acc))
        XCTAssertEqual(batch.images.shape, [2, 2, 3, 4])
        XCTAssertEqual(batch.labels, [1, 0])
        XCTAssertEqual(acc.current[.data] - before, 2 * 24 * 4)
        let want = normalised(ds, 0) + normalised(ds, 1)
        for (g, w) in zip(batch.images.array, want) { XCTAssertEqual(g, w, accuracy: 1e-6) }
        XCTAssertEqual(batch.images[0], -1, accuracy: 1e-6)  // (0/255 − 0.5)/0.5
        XCTAssertNil(try l.next(accountant: acc))
        XCTAssertEqual(l.epoch, 1)
        batch = try XCTUnwrap(l.next(accountant: acc))
        XCTAssertEqual(batch.labels, [1, 0])
        _ = batch
    }

    func testBatch_LastBatchAndDropLast() throws {
        let acc = MemoryAccountant()
        let ds = try Dataset.synthetic(count: 10, height: 2, width: 2, seed: 0, accountant: acc)
        let keep = try DataLoader(ds, batchSize: 4)
        let drop = try DataLoader(ds, batchSize: 4, dropLast: true)
        XCTAssertEqual([keep.batchesPerEpoch, drop.batchesPerEpoch], [3, 2])
        var sizes: [Int] = []
        while let b = try keep.next(accountant: acc) { sizes.append(b.images.n) }
        XCTAssertEqual(sizes, [4, 4, 2])
        sizes = []
        while let b = try drop.next(accountant: acc) { sizes.append(b.size) }
        XCTAssertEqual(sizes, [4, 4])
        let big = try DataLoader(ds, batchSize: 20, dropLast: true)
        XCTAssertThrowsError(try big.nextCycling(accountant: acc))
        XCTAssertThrowsError(try DataLoader(ds, batchSize: 0))
    }

    func testAugment_FlipMirrors() throws {
        let acc = MemoryAccountant()
        let ds = try knownDataset(acc)
        let l = try DataLoader(ds, batchSize: 1, shuffle: false, augmentation: Augmentation(horizontalFlip: true), seed: 5)
        let plain = normalised(ds, 0)
        let mirrored = (0..<24).map { (k: Int) -> Float in plain[(k / 4) * 4 + 3 - k % 4] }
        var seen = Set<Int>()
        for _ in 0..<40 {
            guard let b = try l.next(accountant: acc), b.indices == [0] else { continue }
            let got = b.images.array
            if got == plain { seen.insert(0) } else if got == mirrored { seen.insert(1) } else { XCTFail("neither image nor mirror: \(got)") }
        }
        XCTAssertEqual(seen, [0, 1], "both flipped and unflipped samples appear")
    }

    func testAugment_CropShiftsWithZeroPadding() throws {
        let acc = MemoryAccountant()
        let ds = try knownDataset(acc)
        let pad = 2
        let l = try DataLoader(ds, batchSize: 2, shuffle: false, augmentation: Augmentation(cropPadding: pad), seed: 3)
        let padValue: [Float] = [-1, -1.25]  // (0 − mean)/std per channel
        var shifts = Set<[Int]>()
        for _ in 0..<30 {
            guard let b = try l.next(accountant: acc) else { continue }
            for s in 0..<2 {
                let src = normalised(ds, s)
                let got = Array(b.images.array[s * 24 ..< (s + 1) * 24])
                // Find the shift (dy, dx) ∈ [-pad, pad]² that explains the crop.
                var found: [Int]?
                for dy in -pad...pad {
                    for dx in -pad...pad {
                        let want = (0..<24).map { k -> Float in
                            let c = k / 12, y = k % 12 / 4 + dy, x = k % 4 + dx
                            return (0..<3).contains(y) && (0..<4).contains(x) ? src[c * 12 + y * 4 + x] : padValue[c]
                        }
                        if zip(want, got).allSatisfy({ abs($0 - $1) < 1e-6 }) { found = [dy, dx] }
                    }
                }
                guard let f = found else { return XCTFail("sample \(s) is no shifted crop: \(got)") }
                shifts.insert(f)
            }
        }
        XCTAssertGreaterThan(shifts.count, 10, "crops take many offsets: \(shifts)")
    }

    func testAugment_CutoutZeroesClippedSquare() throws {
        let acc = MemoryAccountant()
        // A constant image of 255: normalised to 1 everywhere, so zeros can only come from cutout.
        let ds = try Dataset(name: "white", images: [UInt8](repeating: 255, count: 2 * 10 * 10), labels: [0], channels: 2,
                             height: 10, width: 10, numClasses: 1, mean: [0, 0], std: [1, 1], accountant: acc)
        let l = try DataLoader(ds, batchSize: 1, augmentation: Augmentation(cutoutLength: 4), seed: 8)
        var areas = Set<Int>()
        for _ in 0..<60 {
            guard let b = try l.next(accountant: acc) else { continue }
            let v = b.images.array
            let zero = (0..<100).filter { v[$0] == 0 }
            XCTAssertEqual(zero, (0..<100).filter { v[100 + $0] == 0 }, "same square in every channel")
            XCTAssertTrue(v.allSatisfy { $0 == 0 || $0 == 1 })
            // The zeros form one axis-aligned rectangle of at most 4×4.
            let ys = Set(zero.map { $0 / 10 }), xs = Set(zero.map { $0 % 10 })
            XCTAssertEqual(zero.count, ys.count * xs.count)
            XCTAssertLessThanOrEqual(ys.count, 4)
            XCTAssertLessThanOrEqual(xs.count, 4)
            if let y0 = ys.min() { XCTAssertEqual(ys.max()! - y0 + 1, ys.count) }
            areas.insert(zero.count)
        }
        XCTAssertTrue(areas.contains(16), "a full square appears: \(areas)")
        XCTAssertTrue(areas.contains { $0 > 0 && $0 < 16 }, "squares are clipped at the edges: \(areas)")
    }

    // MARK: Resume, dry run

    func testState_RestoreReproducesBatches() throws {
        let acc = MemoryAccountant()
        let ds = try Dataset.synthetic(count: 23, channels: 2, height: 5, width: 5, classes: 3, seed: 2, accountant: acc)
        let aug = Augmentation(cropPadding: 1, horizontalFlip: true, cutoutLength: 2)
        let a = try DataLoader(ds, batchSize: 4, augmentation: aug, seed: 11)
        for _ in 0..<9 { _ = try a.nextCycling(accountant: acc) }  // into the second epoch
        let saved = try JSONDecoder().decode(DataLoader.State.self, from: try JSONEncoder().encode(a.state))
        XCTAssertEqual(saved, a.state)
        XCTAssertEqual(saved.epoch, 1)
        let expected = try (0..<10).map { _ in try a.nextCycling(accountant: acc) }

        let b = try DataLoader(ds, batchSize: 4, augmentation: aug, seed: 11)
        try b.restore(saved)
        for e in expected {
            let g = try b.nextCycling(accountant: acc)
            XCTAssertEqual(g.indices, e.indices)
            XCTAssertEqual(g.labels, e.labels)
            XCTAssertEqual(g.images.array, e.images.array)
        }
        let other = try DataLoader(ds, batchSize: 4, augmentation: aug, seed: 12)
        XCTAssertThrowsError(try other.restore(saved))
    }

    func testDryRun_AllocatesShapeOnlyAndKeepsStep() throws {
        let real = MemoryAccountant()
        let dry = MemoryAccountant(mode: .dryRun)
        let ds = try Dataset.synthetic(count: 12, channels: 3, height: 4, width: 4, seed: 0, accountant: real)
        let aug = Augmentation.standard(cutout: 2)
        let a = try DataLoader(ds, batchSize: 5, augmentation: aug, seed: 1)
        let b = try DataLoader(ds, batchSize: 5, augmentation: aug, seed: 1)
        let x = try XCTUnwrap(a.next(accountant: dry))
        XCTAssertTrue(x.images.isVirtual)
        XCTAssertEqual(x.images.shape, [5, 3, 4, 4])
        XCTAssertEqual(dry.peakTotal, 5 * 48 * 4)
        _ = try b.next(accountant: real)
        XCTAssertEqual(a.state, b.state, "dry and real runs advance alike")
    }
}
