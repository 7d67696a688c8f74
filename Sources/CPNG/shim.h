// libpng's simplified API (png_image_*): it reports errors through return values, not longjmp.
#include <png.h>
