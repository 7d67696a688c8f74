// NumPy .npz datasets: NPZ.dataset(bytes:…), the parser `--dataset npz` runs on the file — the zip
// (end record, zip64, central directory, local headers, stored and deflated members, CRCs), each
// .npy header (magic, version, the dict), the dtype, layout and label checks — for both splits.

import EspalierCore
import FuzzCommon

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzNPZ(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let bytes = FuzzInput.bytes(start, count)
    for split in Dataset.Split.allCases {
        if let ds = FuzzInput.attempt("npz \(split)", { try NPZ.dataset(bytes: bytes, file: "fuzz.npz", split: split, accountant: MemoryAccountant()) }) {
            precondition(ds.images.count == ds.count * ds.channels * ds.height * ds.width)
            precondition(ds.labels.allSatisfy { $0 >= 0 && Int($0) < ds.numClasses })
        }
    }
    return 0
}
