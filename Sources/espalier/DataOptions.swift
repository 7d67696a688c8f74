// The dataset options that `search`, `memory`, `train`, `train-pruned` and `eval` share beyond
// --dataset and --data-dir: how an image folder becomes a dataset (--test-fraction, --image-size,
// --skip-bad-images), and the loader every one of them reads its data through.

import ArgumentParser
import EspalierCore
import EspalierSearch
import Foundation

let datasetHelp = "Dataset: fashion-mnist, cifar10, cifar100 (binary versions), folder (an image folder: --data-dir DIR), npz (--data-dir FILE.npz) or synthetic."

struct DataOptions: ParsableArguments {
    @Option(help: "--dataset folder without train/ and test/: the share of each class held out as test (default 0.2; a fixed draw, the same in every run).")
    var testFraction: Double?
    @Option(help: "--dataset folder: resize every image to N×N pixels (bilinear; default: the first training image's size).")
    var imageSize: Int?
    @Flag(help: "--dataset folder: skip images that cannot be decoded (a warning with their count) instead of stopping at the first.")
    var skipBadImages = false

    /// The flags given (for --resume's refusal of search-defining flags).
    var givenFlags: [String] {
        [("--test-fraction", testFraction != nil), ("--image-size", imageSize != nil), ("--skip-bad-images", skipBadImages)].filter(\.1).map(\.0)
    }

    /// Checks the values and writes them into `c`.
    func apply(to c: inout SearchConfig) throws {
        if let f = testFraction {
            guard f >= 0, f < 1 else { throw ValidationError("--test-fraction must be at least 0 and below 1 (got \(f)), e.g. 0.2") }
            c.testFraction = f
        }
        if let n = imageSize {
            guard n >= 1, n <= 4096 else { throw ValidationError("--image-size must be between 1 and 4096 pixels (got \(n))") }
            c.imageSize = n
        }
        if skipBadImages { c.skipBadImages = true }
    }
}

extension DataOptions {
    /// The training and test splits of `dataset` for a training command; the test split is scored
    /// with the training split's statistics and must have its classes.
    func trainAndTest(dataset: String, dataDir: String?, seed: UInt64, accountant acc: MemoryAccountant) throws -> (train: Dataset, test: Dataset) {
        var c = SearchConfig()
        c.dataset = dataset; c.dataDir = dataDir; c.seed = seed
        try apply(to: &c)
        let train = try loadTrainingData(c, accountant: acc, split: .train)
        c.classNames = train.classNames; c.normalization = DataStatistics(of: train)
        return (train, try loadTrainingData(c, accountant: acc, split: .test))
    }
}

/// The `split` of the dataset `c` names. A test split is always normalised with the training data's
/// statistics: `c.normalization` when the run or the saved model recorded them, else measured on the
/// training split now (a model saved before they were recorded); it must have `c.classNames` when
/// those are recorded.
func loadTrainingData(_ c: SearchConfig, accountant acc: MemoryAccountant, split: Dataset.Split = .train) throws -> Dataset {
    if split == .test && c.normalization == nil {
        var measured = c
        measured.normalization = DataStatistics(of: try loadTrainingData(c, accountant: acc, split: .train))   // freed on return
        return try loadTrainingData(measured, accountant: acc, split: .test)
    }
    let ds: Dataset = try acc.withOwner("dataset") {
        switch c.dataset {
        case "fashion-mnist", "fmnist":
            return try Dataset.fashionMNIST(folder: c.dataDir ?? Dataset.fashionMNISTFolder, split: split, accountant: acc)
        case "cifar10", "cifar-10":
            guard let dir = c.dataDir else { throw ValidationError("cifar10 needs --data-dir with the data_batch_*.bin files") }
            return try Dataset.cifar10(folder: dir, split: split, accountant: acc)
        case "cifar100", "cifar-100":
            guard let dir = c.dataDir else { throw ValidationError("cifar100 needs --data-dir with the folder holding train.bin and test.bin") }
            return try Dataset.cifar100(folder: dir, split: split, accountant: acc)
        case "folder", "imagefolder":
            guard let dir = c.dataDir else {
                throw ValidationError("folder needs --data-dir DIR holding train/<class>/*.png|jpg and test/<class>/… (or <class>/… split by --test-fraction)")
            }
            let (ds, skipped) = try Dataset.imageFolder(root: dir, split: split, testFraction: c.testFraction ?? 0.2, imageSize: c.imageSize,
                                                       skipBadImages: c.skipBadImages ?? false, accountant: acc)
            if !skipped.isEmpty {
                let shown = skipped.prefix(5).map { "  " + $0 }.joined(separator: "\n")
                FileHandle.standardError.write(Data(("warning: skipped \(skipped.count) image(s) that could not be decoded (--skip-bad-images):\n" + shown
                                                     + (skipped.count > 5 ? "\n  … and \(skipped.count - 5) more" : "") + "\n").utf8))
            }
            return ds
        case "npz":
            guard let file = c.dataDir else { throw ValidationError("npz needs --data-dir FILE.npz holding x_train, y_train, x_test and y_test") }
            return try NPZ.dataset(path: file, split: split, accountant: acc)
        case "synthetic":
            return try Dataset.synthetic(count: split == .train ? 4000 : 1000, channels: 1, height: 28, width: 28, classes: 10,
                                         seed: c.seed, split: split, accountant: acc)
        default:
            throw ValidationError("unknown dataset '\(c.dataset)'; choose fashion-mnist, cifar10, cifar100, folder, npz or synthetic")
        }
    }
    if split == .test {
        if let names = c.classNames, names != ds.classNames {
            throw ValidationError("\(ds.name) has the classes \(ds.classNames.prefix(12).joined(separator: ", "))\(ds.classNames.count > 12 ? ", …" : "") "
                                  + "but the model was trained on \(names.prefix(12).joined(separator: ", "))\(names.count > 12 ? ", …" : ""); "
                                  + "evaluate on the dataset it was trained on (--dataset, --data-dir)")
        }
        if let n = c.normalization {
            do { try ds.useStatistics(mean: n.mean, std: n.std) } catch {
                throw ValidationError("the recorded normalisation does not fit \(ds.name): \(error)")
            }
        }
    }
    return ds
}

/// The image shape and class count a prediction without data uses: known for the built-in
/// datasets, read from the data for a folder or an .npz.
func predictionShape(_ c: SearchConfig) throws -> (shape: (Int, Int, Int), classes: Int) {
    switch c.dataset {
    case "cifar10", "cifar-10": return ((3, 32, 32), 10)
    case "cifar100", "cifar-100": return ((3, 32, 32), 100)
    case "folder", "imagefolder", "npz":
        let ds = try loadTrainingData(c, accountant: MemoryAccountant())
        return ((ds.channels, ds.height, ds.width), ds.numClasses)
    default: return ((1, 28, 28), 10)
    }
}

/// The metadata `espalier train` saves with a model: the class names and the normalisation it
/// trained with (JSON), so that `espalier eval` scores the test set exactly as training did.
enum ModelDataMetadata {
    static let classesKey = "espalier.classes", normalizationKey = "espalier.normalization", datasetKey = "espalier.dataset"

    static func entries(dataset: String, train: Dataset) throws -> [String: String] {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        return [classesKey: String(decoding: try enc.encode(train.classNames), as: UTF8.self),
                normalizationKey: String(decoding: try enc.encode(DataStatistics(of: train)), as: UTF8.self),
                datasetKey: dataset]
    }

    /// Reads the entries back into `c` (models saved before they existed have none: nothing changes).
    static func apply(_ meta: [String: String], file: String, to c: inout SearchConfig) throws {
        do {
            if let s = meta[classesKey] { c.classNames = try JSONDecoder().decode([String].self, from: Data(s.utf8)) }
            if let s = meta[normalizationKey] { c.normalization = try JSONDecoder().decode(DataStatistics.self, from: Data(s.utf8)) }
        } catch {
            throw EspalierError.data(file: file, problem: "its metadata \(classesKey) / \(normalizationKey) is not valid JSON (\(error)); save the model again with espalier train")
        }
    }
}
