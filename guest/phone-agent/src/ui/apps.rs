//! The launcher's apps: names, icon colours, and whether they open a page.

use crate::canvas::Color;

/// An icon on the home screen. Paint, Info and Clock open pages; the rest are inert
/// decorations that make the screen look like a phone (and give the tests more labels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum App {
    Paint,
    Info,
    Clock,
    Camera,
    Messages,
    Music,
    Maps,
    Settings,
    Phone,
    Browser,
    Mail,
    Gallery,
}

/// Icons in the grid, row-major, 4 per row.
pub const GRID: [App; 8] = [
    App::Paint,
    App::Info,
    App::Clock,
    App::Camera,
    App::Messages,
    App::Music,
    App::Maps,
    App::Settings,
];

/// Icons in the dock.
pub const DOCK: [App; 4] = [App::Phone, App::Browser, App::Mail, App::Gallery];

impl App {
    /// The label under the icon and the `SCREEN app=` name (lowercased).
    pub fn name(self) -> &'static str {
        match self {
            App::Paint => "Paint",
            App::Info => "Info",
            App::Clock => "Clock",
            App::Camera => "Camera",
            App::Messages => "Messages",
            App::Music => "Music",
            App::Maps => "Maps",
            App::Settings => "Settings",
            App::Phone => "Phone",
            App::Browser => "Browser",
            App::Mail => "Mail",
            App::Gallery => "Gallery",
        }
    }

    /// The icon's fill colour; all distinct so screenshots can find each icon by colour.
    pub fn color(self) -> Color {
        match self {
            App::Paint => 0xe53935,
            App::Info => 0x1e88e5,
            App::Clock => 0x43a047,
            App::Camera => 0x8e24aa,
            App::Messages => 0xfb8c00,
            App::Music => 0xd81b60,
            App::Maps => 0x00acc1,
            App::Settings => 0x546e7a,
            App::Phone => 0x7cb342,
            App::Browser => 0x3949ab,
            App::Mail => 0xf4511e,
            App::Gallery => 0xfdd835,
        }
    }

    /// Colour of the letter drawn on the icon (dark on the light yellow one).
    pub fn glyph_color(self) -> Color {
        if self == App::Gallery {
            0x303030
        } else {
            0xffffff
        }
    }

    /// True for apps that have a page.
    pub fn opens(self) -> bool {
        matches!(self, App::Paint | App::Info | App::Clock)
    }
}
