// IDX images and labels (Fashion-MNIST's format), gzip-compressed or plain: the bytes go to a
// file and through IDX.readImages / IDX.readLabels, i.e. the zlib reader (ZReader) and the header
// and size checks. A thrown error is a correct refusal; only crashes are findings.

import EspalierCore
import FuzzCommon

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzIDX(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    let path = FuzzInput.file(FuzzInput.bytes(start, count), name: "input-idx3-ubyte.gz")
    if let images = FuzzInput.attempt("readImages", { try IDX.readImages(path: path) }) {
        precondition(images.pixels.count == images.count * images.rows * images.cols, "image payload does not match its dims")
    }
    _ = FuzzInput.attempt("readLabels") { try IDX.readLabels(path: path) }
    return 0
}
