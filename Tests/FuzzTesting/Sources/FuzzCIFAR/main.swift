// CIFAR-10 binary batches: Dataset.cifar10Batch, the parser the folder loader runs on each batch
// file. The first byte picks how many records the batch must hold (0…3, the loader asks for
// 10 000) and the second how many unread bytes followed it; the rest is the batch.

import EspalierCore
import FuzzCommon

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzCIFAR(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let bytes = FuzzInput.bytes(start, count)
    guard bytes.count >= 2 else { return 0 }
    let records = Int(bytes[0] % 4)
    let trailing = bytes[1] < 0xF0 ? 0 : Int(bytes[1] & 0x0F)
    let body = Array(bytes[2...])
    if let batch = FuzzInput.attempt("cifar10Batch", { try Dataset.cifar10Batch(body, trailingBytes: trailing, records: records, file: "fuzz.bin") }) {
        precondition(batch.labels.count == records && batch.pixels.count == records * (Dataset.cifar10RecordBytes - 1))
        precondition(batch.labels.allSatisfy { (0..<10).contains($0) })
    }
    return 0
}
